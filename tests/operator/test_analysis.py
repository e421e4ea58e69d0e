"""Analysis verdicts over recorded metric series (pure): every gate, per length bucket, missing data, errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localattn_operator import analysis
from localattn_operator.analysis import AnalysisRequest, ArmFigures, Figures, PairedFigures, Window
from localattn_operator.metrics_provider import ArmRef, FirstAvailable, ProviderError, collect_arm
from localattn_operator.models import (
    AnalysisCounters,
    AnalysisSpec,
    GateStatus,
    LastAnalysisStatus,
    Measurement,
)

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
REQ = AnalysisRequest("canary", T0, T0 + timedelta(seconds=60), "stable1", "canary1")
BUCKETS = ["0-512", "512-2048", "2048-inf"]


def spec(**thresholds: Any) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"thresholds": thresholds, "minRequests": 10})


# A recorded window: what Prometheus answered for each arm (p95 in seconds, rates as fractions).
GOOD_STABLE = {"requests": 120, "p95_e2e": 2.0, "p95_ttft": 0.40, "p95_itl": 0.050, "error_rate": 0.0,
               "tokens_per_pod_second": 80.0, "probe_perplexity": 12.0, "probe_exact_match": 0.90}
GOOD_BUCKETS = {"0-512": {"bucket_requests": 80, "bucket_p95_e2e": 1.5, "bucket_probe_perplexity": 11.0,
                          "bucket_probe_exact_match": 0.95},
                "512-2048": {"bucket_requests": 30, "bucket_p95_e2e": 3.0, "bucket_probe_perplexity": 13.0,
                             "bucket_probe_exact_match": 0.85},
                "2048-inf": {"bucket_requests": 10, "bucket_p95_e2e": 6.0, "bucket_probe_perplexity": 14.0,
                             "bucket_probe_exact_match": 0.80}}


class Recorded:
    """A provider that replays recorded answers: {(revision, bucket or None): {template: value}}."""

    name = "recorded"

    def __init__(self, series: Mapping[tuple[str, str | None], Mapping[str, float | None]],
                 down: bool = False) -> None:
        self.series, self.down = series, down
        self.asked: list[tuple[str, dict[str, str]]] = []

    def query(self, template_name: str, params: Mapping[str, str], window_seconds: float) -> float | None:
        self.asked.append((template_name, dict(params)))
        if self.down:
            raise ProviderError("connection refused")
        return self.series.get((params["revision"], params.get("bucket")), {}).get(template_name)


def recorded(canary: Mapping[str, float | None] | None = None,
             canary_buckets: Mapping[str, Mapping[str, float | None]] | None = None) -> Recorded:
    series: dict[tuple[str, str | None], Mapping[str, float | None]] = {("stable1", None): GOOD_STABLE}
    series[("canary1", None)] = {**GOOD_STABLE, **(canary or {})}
    for b, v in GOOD_BUCKETS.items():
        series[("stable1", b)] = v
        series[("canary1", b)] = {**v, **((canary_buckets or {}).get(b, {}))}
    return Recorded(series)


def window(provider: Recorded, paired: tuple[PairedFigures, ...] = ()) -> Window:
    def arm(rev: str) -> ArmFigures:
        return collect_arm(provider, ArmRef("ns", "llm", rev), 60, BUCKETS, gpus_per_pod=2, gpu_hour_price=3.6)
    return Window(REQ, arm("stable1"), arm("canary1"), paired)


def verdict(provider: Recorded, a: AnalysisSpec, probe: bool = True, paired: bool = False,
            pairs: tuple[PairedFigures, ...] = ()) -> analysis.Verdict:
    return analysis.assess(window(provider, pairs), a, probe=probe, paired=paired)


QUALITY = {"maxPerplexityRatio": 1.05, "maxExactMatchDrop": 0.05}


def failed_gates(v: analysis.Verdict) -> set[tuple[str, str]]:
    return {(g.gate, g.bucket) for g in v.gates if g.phase == "Failed"}


def test_a_good_canary_passes_every_gate_per_bucket() -> None:
    v = verdict(recorded(), spec(**QUALITY, minCostSavingPercent=-5))
    assert v.phase == "Successful", v.summary()
    gates = {(g.gate, g.bucket) for g in v.gates}
    assert ("latency.e2e", "512-2048") in gates and ("quality.perplexity", "2048-inf") in gates
    assert ("latency.ttft", "all") in gates and ("cost", "all") in gates


def test_collect_arm_converts_throughput_and_cost() -> None:
    arm = window(recorded()).canary
    assert arm.total.tokens_per_gpu_second == pytest.approx(40.0)  # 80 tokens/s per pod over 2 GPUs
    assert arm.total.cost_per_million == pytest.approx(3.6 / 3600 / 40 * 1e6)  # 25 per 1M tokens
    assert arm.buckets["0-512"].p95_e2e == 1.5


def test_quality_regression_is_caught_while_latency_passes() -> None:
    provider = recorded({"probe_perplexity": 15.0, "probe_exact_match": 0.60})
    v = verdict(provider, spec(**QUALITY))
    assert v.phase == "Failed"
    assert ("quality.perplexity", "all") in failed_gates(v) and ("quality.exactMatch", "all") in failed_gates(v)
    assert all(g.phase == "Successful" for g in v.gates if g.gate.startswith("latency"))
    bad = next(g for g in v.gates if g.gate == "quality.perplexity" and g.bucket == "all")
    assert (bad.canary, bad.stable, bad.threshold) == (15.0, 12.0, 1.05)
    assert "canary 15, stable 12, threshold 1.05" in v.summary()
    # the same canary passes a latency-only analysis: the quality gate is what caught it
    assert verdict(provider, spec()).phase == "Successful"


def test_latency_regression_is_caught() -> None:
    v = verdict(recorded({"p95_ttft": 0.60}), spec())
    assert failed_gates(v) == {("latency.ttft", "all")}
    assert "p95 regressed more than 20%" in v.summary()


def test_a_bucket_beyond_its_threshold_fails_while_the_aggregate_passes() -> None:
    # only prompts beyond 4W got slower (local attention's window), the aggregate p95 did not move
    v = verdict(recorded(canary_buckets={"2048-inf": {"bucket_p95_e2e": 9.0, "bucket_probe_perplexity": 17.0}}),
                spec(**QUALITY))
    assert v.phase == "Failed"
    assert failed_gates(v) == {("latency.e2e", "2048-inf"), ("quality.perplexity", "2048-inf")}
    assert "[prompt 2048-inf tokens]" in v.summary()


def test_a_bucket_with_too_few_requests_is_not_judged() -> None:
    v = verdict(recorded(canary_buckets={"2048-inf": {"bucket_requests": 3, "bucket_p95_e2e": 60.0}}), spec())
    assert v.phase == "Successful"
    assert ("latency.e2e", "2048-inf") not in {(g.gate, g.bucket) for g in v.gates}


def test_provider_down_is_an_inconclusive_window_not_a_failure() -> None:
    provider = recorded()
    provider.down = True
    v = verdict(provider, spec(**QUALITY))
    assert v.phase == "Inconclusive" and v.provider_error
    assert all(g.phase == "Error" for g in v.gates)  # each gate still says which query errored
    assert "connection refused" in v.summary()
    assert analysis.verdict_status(v, "2026-12-01T12:01:00Z").phase == "Inconclusive"


def test_fallback_provider_answers_when_the_first_is_down() -> None:
    down = recorded()
    down.down = True
    arm = collect_arm(FirstAvailable([down, recorded()]), ArmRef("ns", "llm", "canary1"), 60, [])
    assert arm.errors == {} and arm.total.p95_e2e == 2.0
    with pytest.raises(ProviderError, match="recorded: connection refused"):
        FirstAvailable([down]).query("p95_e2e", {"namespace": "ns", "lad": "l", "revision": "r"}, 60)


@pytest.mark.parametrize(("missing_data", "phase"), [("inconclusive", "Inconclusive"), ("fail", "Failed")])
def test_missing_data_follows_the_spec(missing_data: str, phase: str) -> None:
    a = AnalysisSpec.model_validate({"missingData": missing_data, "minRequests": 10})
    no_traffic = recorded({"requests": 2})  # the canary got almost nothing this window
    assert verdict(no_traffic, a).phase == phase
    no_series = recorded({"p95_itl": None})  # NaN or no series
    assert verdict(no_series, a).phase == phase


def test_nan_is_no_data() -> None:
    arm = collect_arm(recorded({"p95_e2e": float("nan")}), ArmRef("ns", "llm", "canary1"), 60, [])
    assert arm.total.p95_e2e is None


def test_probe_gates_need_the_probe() -> None:
    v = verdict(recorded({"probe_perplexity": 100.0}), spec(**QUALITY), probe=False)
    assert v.phase == "Successful" and not any(g.gate.startswith("quality") for g in v.gates)


def test_paired_agreement_gate_per_bucket_and_error() -> None:
    pairs = (PairedFigures("all", 32, 0.95, 20.0, 0.01), PairedFigures("2048-inf", 8, 0.5, 3.0, 0.4),
             PairedFigures("0-512", 0))
    v = verdict(recorded(), spec(minAgreement=0.9), paired=True, pairs=pairs)
    assert failed_gates(v) == {("quality.agreement", "2048-inf")}
    errored = analysis.assess(Window(REQ, window(recorded()).stable, window(recorded()).canary, (), "pod gone"),
                              spec(minAgreement=0.9), probe=False, paired=True)
    assert errored.phase == "Inconclusive" and errored.provider_error and "pod gone" in errored.summary()
    none = analysis.assess(window(recorded()), spec(minAgreement=0.9), probe=False, paired=True)
    assert none.phase == "Inconclusive" and not none.provider_error  # no prompts: missing data


def test_error_rate_and_cost_gates() -> None:
    assert failed_gates(verdict(recorded({"error_rate": 0.2}), spec())) == {("errorRate", "all")}
    cheaper = recorded({"tokens_per_pod_second": 120.0})  # 1 - 80/120 = 33% cheaper
    assert verdict(cheaper, spec(minCostSavingPercent=30)).phase == "Successful"
    assert failed_gates(verdict(recorded(), spec(minCostSavingPercent=30))) == {("cost", "all")}


def test_failure_beats_a_provider_error_which_is_inconclusive() -> None:
    good = window(recorded())
    errored = ArmFigures("canary1", good.canary.total, {}, {"p95_itl": "timeout"})  # one query timed out
    missing = ArmFigures("canary1", Figures(**{**good.canary.total.__dict__, "probe_perplexity": None}), {},
                         {"p95_itl": "timeout"})
    slow = ArmFigures("canary1", Figures(**{**missing.total.__dict__, "p95_e2e": 9.0}), {}, {"p95_itl": "timeout"})
    judge = lambda arm: analysis.assess(Window(REQ, good.stable, arm), spec(**QUALITY), probe=True,  # noqa: E731
                                        paired=False)
    assert (judge(errored).phase, judge(errored).provider_error) == ("Inconclusive", True)
    both = judge(missing)  # an unanswerable query and missing data: a provider-error window, the error named first
    assert (both.phase, both.provider_error) == ("Inconclusive", True)
    assert both.summary().startswith("latency.itl: provider error: canary1: timeout"), both.summary()
    assert "quality.perplexity: missing data" in both.summary()
    assert judge(slow).phase == "Failed" and not judge(slow).provider_error  # a real failure beats both


@pytest.mark.parametrize(
    ("phases", "limits", "outcomes"),
    [
        (["Successful"], {}, ["advance"]),
        (["Failed"], {}, ["rollback"]),  # failureLimit 0: the first failure rolls back (Argo)
        (["Failed", "Failed"], {"failureLimit": 1}, ["hold", "rollback"]),
        (["Inconclusive"] * 4, {}, ["hold", "hold", "hold", "rollback"]),  # inconclusiveLimit 3
        # "Error": a provider-error window (Inconclusive). Provider down: four in a row hold for free, each one
        # beyond consecutiveErrorLimit (4) counts as missing data (inconclusive) ...
        (["Error"] * 5, {"inconclusiveLimit": 0}, ["hold"] * 4 + ["rollback"]),
        (["Error"] * 5, {"inconclusiveLimit": 1}, ["hold"] * 5),
        (["Error"] * 6, {"inconclusiveLimit": 1}, ["hold"] * 5 + ["rollback"]),
        (["Error"] * 5, {"missingData": "fail"}, ["hold"] * 4 + ["rollback"]),
        # ... the free ones leave the inconclusive budget whole ...
        (["Error"] * 4 + ["Inconclusive"] * 4, {}, ["hold"] * 7 + ["rollback"]),
        # ... a success in between resets the run of errors ...
        (["Error"] * 4 + ["Successful"] + ["Error"] * 4, {"inconclusiveLimit": 0}, ["hold"] * 4 + ["advance"] + ["hold"] * 4),
        # ... and a failed gate beats an errored one: the window is a failure, not a provider error
        (["Error", "Failed"], {}, ["hold", "rollback"]),
    ],
)
def test_counters_follow_argo_limits(phases: list[Any], limits: dict[str, Any], outcomes: list[str]) -> None:
    a = AnalysisSpec.model_validate(limits)
    counters, seen = AnalysisCounters(), []
    for phase in phases:
        errored = phase == "Error"
        counters, outcome, _ = analysis.count(counters, "Inconclusive" if errored else phase, a, provider_error=errored)
        seen.append(outcome)
    assert seen == outcomes


def test_provider_errors_are_counted_and_say_why_they_hold() -> None:
    a = AnalysisSpec.model_validate({"consecutiveErrorLimit": 1, "inconclusiveLimit": 2})
    c, outcome, why = analysis.count(AnalysisCounters(), "Inconclusive", a, provider_error=True)
    assert (outcome, why) == ("hold", "holding (provider error 1/1 in a row)")
    assert (c.errors, c.consecutive_errors, c.inconclusive) == (1, 1, 0)  # within the limit: nothing charged
    c = AnalysisCounters.model_validate(c.model_dump(mode="json", by_alias=True))  # a restart reads them back
    c, outcome, why = analysis.count(c, "Inconclusive", a, provider_error=True)
    assert outcome == "hold" and why == ("holding (provider error 2 in a row, beyond consecutiveErrorLimit 1: "
                                         "inconclusive measurement 1, inconclusiveLimit 2)")
    c, _, why = analysis.count(c, "Inconclusive", a, provider_error=True)
    assert (c.errors, c.consecutive_errors, c.inconclusive) == (3, 3, 2), why
    c, outcome, why = analysis.count(c, "Inconclusive", a, provider_error=True)
    assert outcome == "rollback" and why.endswith("3 inconclusive measurement(s), inconclusiveLimit 2"), why
    c, outcome, _ = analysis.count(AnalysisCounters(errors=3, consecutive_errors=3), "Successful", a)
    assert (outcome, c.errors, c.consecutive_errors) == ("advance", 3, 0)


def test_a_status_from_before_provider_errors_were_inconclusive_still_reads() -> None:
    old = {"phase": "Error", "startedAt": "t0", "finishedAt": "t1", "stepIndex": 0, "canaryRevision": "c"}
    assert Measurement.model_validate(old).phase == "Inconclusive"
    assert LastAnalysisStatus.model_validate({"phase": "Error", "finishedAt": "t1"}).phase == "Inconclusive"
    assert GateStatus.model_validate({"gate": "latency.e2e", "phase": "Error"}).phase == "Error"
    with pytest.raises(ValueError, match="Inconclusive"):
        Measurement.model_validate({**old, "phase": "Unknown"})


def test_guard_compares_the_new_stable_with_the_recorded_baseline() -> None:
    before = window(recorded())
    baseline = analysis.arm_from_status(analysis.arm_status(before.stable))  # survives the status round trip
    assert baseline.total == before.stable.total and baseline.buckets == before.stable.buckets
    now_bad = window(recorded({"probe_exact_match": 0.5})).canary
    guard = AnalysisRequest("guard", T0, T0 + timedelta(seconds=60), "canary1", None)
    v = analysis.assess_guard(Window(guard, baseline, now_bad), spec(**QUALITY))
    assert failed_gates(v) == {("quality.exactMatch", "all")}
    assert not any(g.gate.startswith("latency") for g in v.gates)


def test_verdict_status_carries_every_figure() -> None:
    v = verdict(recorded(), spec(**QUALITY), paired=True, pairs=(PairedFigures("all", 4, 1.0, 16.0, 0.0),))
    s = analysis.verdict_status(v, "2026-12-01T12:01:00Z")
    dumped = s.model_dump(by_alias=True)
    assert dumped["canary"]["p95TTFTSeconds"] == 0.4 and dumped["canary"]["tokensPerGPUSecond"] == 40.0
    assert dumped["canary"]["buckets"][0]["bucket"] == "0-512"
    assert dumped["paired"][0]["agreement"] == 1.0 and dumped["gates"]
    assert Figures() == analysis.arm_from_status(type(s.canary)()).total


def test_only_the_listed_latency_gates_apply() -> None:
    assert {g.gate for g in verdict(recorded(), spec()).gates if g.gate.startswith("latency")} >= {
        "latency.e2e", "latency.ttft", "latency.itl"}  # the default: all three at 20%
    only_ttft = verdict(recorded({"p95_e2e": 9.0}), spec(maxLatencyRegressionPercent={"ttft": 30}))
    assert {g.gate for g in only_ttft.gates if g.gate.startswith("latency")} == {"latency.ttft"}
    assert only_ttft.phase == "Successful"
    none = verdict(recorded({"p95_e2e": 9.0}), spec(maxLatencyRegressionPercent={}))
    assert not any(g.gate.startswith("latency") for g in none.gates)


def test_a_bucket_with_perplexity_but_no_exact_match_prompt_judges_only_perplexity() -> None:
    """The probe scores texts by context length and prompts by their length: a bucket can have perplexity
    tokens and no exact-match prompt. That bucket's exact-match gate is not judged (not missing data)."""
    provider = recorded()
    for rev in ("stable1", "canary1"):
        provider.series[(rev, "2048-inf")] = {**provider.series[(rev, "2048-inf")], "bucket_probe_exact_match": None}
    v = verdict(provider, spec(**QUALITY))
    assert v.phase == "Successful", v.summary()
    judged = {(g.gate, g.bucket) for g in v.gates}
    assert ("quality.perplexity", "2048-inf") in judged and ("quality.exactMatch", "2048-inf") not in judged
