"""The demo's pure parts: observing pods and status.rollout, the live block, buckets from load results, the
summary table, and the examples it applies (the baseline, the local-attention revision, the bad one)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_dev import demo_view as view
from localattn_operator.analysis import Figures
from localattn_operator.validation import validate_spec

ROOT = Path(__file__).resolve().parents[2]


def pod(revision: str, ready: bool, track: str = "", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"localattn.dev/deployment": "tiny-llama", "localattn.dev/revision": revision}}
    if track:
        meta["labels"]["localattn.dev/track"] = track
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_pod_groups_count_ready_pods_per_revision_and_terminating_ones_as_not_ready() -> None:
    groups = view.pod_groups([pod("a", True, "stable"), pod("a", True, "stable"), pod("b", False, "canary"),
                              pod("a", True, deleting=True), {"metadata": {"labels": {}}}])  # fmt: skip
    assert groups == {"a": (2, 3, "stable"), "b": (0, 1, "canary")}


def test_arm_samples_share_is_the_ready_pod_share_and_stable_comes_first() -> None:
    arms = view.arm_samples({"b": (1, 1, "canary"), "a": (3, 3, "stable")}, {"b": Figures(p95_e2e=0.5)})
    assert [(a.revision, a.share) for a in arms] == [("a", 75.0), ("b", 25.0)]
    assert arms[1].figures.p95_e2e == 0.5 and arms[0].figures == Figures()
    assert [a.share for a in view.arm_samples({"a": (0, 2, "")}, {})] == [0.0]  # nothing ready: no division by 0


def lad_with_rollout(**rollout: Any) -> dict[str, Any]:
    return {"spec": {"rollout": {"steps": [{"setWeight": 25}, {"setWeight": 50}]}},
            "status": {"phase": "Ready", "ready": "2/2", "rollout": rollout}}


def test_rollout_view_reads_status_rollout_and_the_failed_gates() -> None:
    lad = lad_with_rollout(
        phase="Progressing", stepIndex=1, desiredWeight=50, achievedWeight=33, stableRevision="a", canaryRevision="b",
        lastAnalysis={"phase": "Failed", "gates": [
            {"gate": "quality.perplexity", "bucket": "all", "phase": "Failed"},
            {"gate": "latency.e2e", "bucket": "256-inf", "phase": "Successful"}]},
    )  # fmt: skip
    r = view.rollout_view(lad)
    assert r is not None
    assert (r.phase, r.step_index, r.steps, r.desired_weight, r.achieved_weight) == ("Progressing", 1, 2, 50, 33)
    assert (r.stable_revision, r.canary_revision, r.last_analysis) == ("a", "b", "Failed")
    assert r.failed_gates == ("quality.perplexity[all]",)
    assert view.rollout_view({"status": {"phase": "Ready"}}) is None  # an operator without progressive delivery
    down = view.rollout_view(lad_with_rollout(phase="Progressing", lastAnalysis={"phase": "Inconclusive", "gates": [
        {"gate": "latency.e2e", "bucket": "all", "phase": "Error"}]}))  # fmt: skip
    assert down is not None and down.last_analysis == "Inconclusive (provider error)" and down.failed_gates == ()
    assert view.lad_phase(lad) == "Ready 2/2"


def test_history_decisions_are_timed_from_the_demo_start_and_only_new_ones_returned() -> None:
    lad = lad_with_rollout(phase="Promoted", history=[
        {"time": "2026-12-01T10:00:30Z", "from": "Idle", "to": "Progressing", "reason": "RolloutStarted"},
        {"time": "2026-12-01T10:02:00Z", "from": "Progressing", "to": "Promoting", "reason": "AnalysisSuccessful",
         "message": "step 2 passed"}])  # fmt: skip
    started = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    decisions = view.history_decisions(lad, started)
    assert [(d.t, d.text) for d in decisions] == [
        (30.0, "Idle -> Progressing: RolloutStarted"),
        (120.0, "Progressing -> Promoting: AnalysisSuccessful (step 2 passed)")]
    assert [d.t for d in view.history_decisions(lad, started, seen=1)] == [120.0]


@pytest.mark.parametrize(("local", "expected"), [
    ({"enabled": False, "windowSize": 64}, "full attention"),
    ({"windowSize": 64, "sinkTokens": 4, "globalLayers": {"indices": [0]}}, "W=64 S=4 global [0]"),
    ({"enabled": True, "windowSize": 16, "sinkTokens": 0, "globalLayers": {"indices": []}}, "W=16 S=0 no global layer"),
    ({"globalLayers": {"every": 6}}, "W=1024 S=4 global every 6"),
])  # fmt: skip
def test_describe_attention(local: dict[str, Any], expected: str) -> None:
    assert view.describe_attention({"localAttention": local}) == expected


def test_format_sample_shows_the_rollout_state_and_one_row_per_arm() -> None:
    rollout = view.RolloutView("Progressing", 0, 2, 25, 33, "a", "b", last_analysis="Successful")
    sample = view.Sample(75.0, view.arm_samples(
        {"a": (2, 2, "stable"), "b": (1, 1, "canary")},
        {"a": Figures(p95_e2e=0.412, p95_ttft=0.05, tokens_per_gpu_second=58.1, cost_per_million=11.95,
                      probe_perplexity=47.6, probe_exact_match=1.0),
         "b": Figures(p95_e2e=0.39)}), rollout, "Ready 2/2")  # fmt: skip
    text = view.format_sample(sample, {"a": "full attention", "b": "W=64 S=4 global [0]"})
    head, cols, stable, canary = text.splitlines()
    assert head.startswith("[1:15] LAD Ready 2/2 | rollout Progressing step 1/2 weight 25% (achieved 33%)")
    assert "last analysis Successful" in head
    assert "p95 e2e" in cols and "USD/1M" in cols
    assert stable.split()[:6] == ["stable", "a", "full", "attention", "2/2", "67%"]
    assert "0.412s" in stable and "58.1" in stable and "11.9" in stable and "47.6" in stable
    assert canary.split()[:2] == ["canary", "b"] and "0.39s" in canary and canary.rstrip().endswith("-")
    plain = view.format_sample(view.Sample(3.0, ()), {})
    assert "no status.rollout" in plain and "(no serving pods yet)" in plain


def test_changed_ignores_figures_but_not_pods_or_steps() -> None:
    a = view.Sample(1.0, view.arm_samples({"a": (1, 2, "")}, {}))
    assert view.changed(None, a)
    assert not view.changed(a, view.Sample(4.0, view.arm_samples({"a": (1, 2, "")}, {"a": Figures(p95_e2e=1.0)})))
    assert view.changed(a, view.Sample(4.0, view.arm_samples({"a": (2, 2, "")}, {})))


def test_percentile_interpolates_like_numpy() -> None:
    assert view.percentile([], 95) is None
    assert view.percentile([3.0], 95) == 3.0
    assert view.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert view.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


def test_bucket_figures_split_the_load_clients_requests_by_prompt_length() -> None:
    result = {"input_lens": [100, 255, 256, 400, 300], "latencies": [1.0, 2.0, 3.0, 4.0, 9.0],
              "ttfts": [0.1, 0.2, 0.3, 0.4, 0.9], "errors": ["", "", "", "", "timeout"]}  # fmt: skip
    short, long = view.bucket_figures(result, [256])
    assert (short.bucket, short.requests) == ("0-256", 2)  # lo <= n < hi: 256 belongs to the upper bucket
    assert short.p95_e2e == pytest.approx(1.95) and short.p95_ttft == pytest.approx(0.195)
    assert (long.bucket, long.requests) == ("256-inf", 2)  # the failed request is left out
    assert long.p95_e2e == pytest.approx(3.95)
    empty = view.bucket_figures({}, [64, 256])
    assert [(b.bucket, b.requests, b.p95_e2e) for b in empty] == [("0-64", 0, None), ("64-256", 0, None),
                                                                  ("256-inf", 0, None)]


def test_summary_markdown_puts_the_revisions_side_by_side() -> None:
    rows = [
        view.RevisionSummary("a", "full attention", "baseline", 95.0,
                             Figures(requests=120, p95_e2e=0.41, cost_per_million=11.9, probe_perplexity=47.5),
                             (view.BucketLoad("0-256", 60, 0.3, 0.05), view.BucketLoad("256-inf", 60, 0.5, 0.08))),
        view.RevisionSummary("b", "W=64 S=4 global [0]", "promoted", 120.0, Figures(p95_e2e=0.40), ()),
    ]  # fmt: skip
    lines = view.summary_markdown(rows).splitlines()
    assert lines[0] == "| | full attention (`a`) | W=64 S=4 global [0] (`b`) |"
    assert lines[1] == "|---|---|---|"
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert table["outcome"] == ["baseline", "promoted |"]
    assert table["p95 end-to-end latency"] == ["0.41 s", "0.4 s |"]
    assert table["cost per 1M generated tokens (USD)"] == ["11.9", "- |"]
    assert table["prompt tokens 256-inf (load client)"] == ["60 req, p95 e2e 0.5 s, TTFT 0.08 s", "- |"]
    assert view.summary_markdown([]) == "(no revision served)"


def test_serving_windows_span_the_samples_with_ready_pods() -> None:
    samples = [view.Sample(0.0, view.arm_samples({"a": (0, 2, "")}, {})),
               view.Sample(10.0, view.arm_samples({"a": (2, 2, "")}, {})),
               view.Sample(20.0, view.arm_samples({"a": (2, 2, ""), "b": (1, 1, "")}, {})),
               view.Sample(30.0, view.arm_samples({"b": (2, 2, "")}, {}))]  # fmt: skip
    assert view.serving_windows(samples) == {"a": (10.0, 20.0), "b": (20.0, 30.0)}


EXAMPLES = {name: yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
            for name in ("deployment", "deployment-local", "deployment-bad")}


def test_the_demo_examples_are_valid_and_differ_only_in_local_attention() -> None:
    specs = {name: validate_spec(doc["spec"]) for name, doc in EXAMPLES.items()}
    assert not specs["deployment"].local_attention.enabled  # the baseline is full attention
    assert specs["deployment-local"].local_attention.enabled
    bad = specs["deployment-bad"].local_attention
    assert bad.enabled and bad.sink_tokens == 0 and bad.global_layers.indices == [] and bad.window_size < 64
    base = EXAMPLES["deployment"]
    for name in ("deployment-local", "deployment-bad"):
        other = EXAMPLES[name]
        assert {k: v for k, v in other.items() if k != "spec"} == {k: v for k, v in base.items() if k != "spec"}
        assert {k: v for k, v in other["spec"].items() if k != "localAttention"} == \
            {k: v for k, v in base["spec"].items() if k != "localAttention"}


def test_the_demo_examples_fit_the_demo_machine() -> None:
    spec = validate_spec(EXAMPLES["deployment"]["spec"])
    assert spec.replicas == 2 and spec.memory.kv_cache_memory is not None
    assert spec.cost is not None and spec.rollout is not None and spec.rollout.steps
    assert spec.probe.enabled and spec.probe.golden_set is not None
    cpu = sum(float(EXAMPLES["deployment"]["spec"]["runtime"]["resources"]["requests"]["cpu"]) for _ in range(2))
    assert cpu <= 2  # two serving pods on the 2-core machine
