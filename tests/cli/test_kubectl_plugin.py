"""`kubectl localattn`: the status table from a recorded status (pure), and the kubectl command lines it runs."""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from localattn_cli.kubectl_plugin import build_parser, format_status, request_value, table
from localattn_operator.duration import parse_time
from localattn_operator.models import ManualAcknowledged, RolloutStatus
from localattn_operator.rollout_control import ManualRequest, pending_requests

HERE = Path(__file__).resolve().parent
RECORDED = json.loads((HERE / "recorded_status.json").read_text())
SPEC = {"model": {"uri": "pvc://models/tiny"}, "replicas": 4, "cost": {"gpuHourPrice": 2.5, "currency": "EUR"},
        "rollout": {"steps": [{"setWeight": 10}, {"setWeight": 25}, {"pause": {}}, {"setWeight": 50}]}}


def lad(status: dict[str, Any] | None = RECORDED, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    return {"metadata": {"name": "llm", "namespace": "team-a"}, "spec": spec,
            "status": {"rollout": status} if status is not None else {}}


def rows_of(text: str) -> dict[str, list[str]]:
    return {line.split("  ")[0].strip(): line.split() for line in text.splitlines() if line.strip()}


def test_the_recorded_status_is_a_valid_rollout_status() -> None:
    RolloutStatus.model_validate(RECORDED)


def test_status_table_shows_step_weights_and_every_figure_per_arm() -> None:
    text = format_status(lad())
    assert "Phase:      Progressing" in text
    assert "step 2/4 (setWeight 25); weight desired 25%, achieved 20%" in text
    assert "stable aaaaaaaaaa (4 planned), canary bbbbbbbbbb (1 planned)" in text
    assert "successful 1, failed 1, inconclusive 0, errors 2 (0 in a row)" in text
    rows = rows_of(text)
    assert rows["FIGURE"][-2:] == ["CANARY", "bbbbbbbbbb"]
    assert rows["p95 e2e latency (s)"][-2:] == ["2", "2.1"]
    assert rows["p95 TTFT (s)"][-2:] == ["0.4", "0.41"]
    assert rows["p95 ITL (s)"][-2:] == ["0.05", "0.049"]
    assert rows["error rate"][-2:] == ["0.00%", "1.96%"]
    assert rows["tokens / GPU-s"][-2:] == ["40", "55.5"]
    assert rows["cost / 1M tokens (EUR)"][-2:] == ["17.36", "12.51"]
    assert rows["probe perplexity"][-2:] == ["12", "19"]
    assert rows["probe exact match"][-2:] == ["0.900", "0.400"]


def test_status_table_per_length_bucket_paired_gates_and_decisions() -> None:
    text = format_status(lad(), history=1)
    rows = rows_of(text)
    assert rows["[0-512] p95 e2e latency (s)"][-2:] == ["1.5", "1.4"]
    assert rows["[0-512] probe perplexity"][-2:] == ["11", "11.2"]
    assert rows["[512-2048] requests"][-2:] == ["50", "13"]
    assert "[512-2048] probe perplexity" not in rows  # not measured in that bucket: no empty row
    assert text.index("[0-512]") < text.index("[512-2048]")
    assert rows["all"][:3] == ["all", "32", "0.710"]
    assert rows["quality.perplexity"] == ["quality.perplexity", "all", "Failed", "19", "12", "1.05"]
    assert "Decisions (last 1 of 2):" in text
    assert "AnalysisSuccessful" in text and "RolloutStarted" not in text


def test_status_of_a_window_the_provider_could_not_answer() -> None:
    message = "latency.e2e: provider error: bbbbbbbbbb: Prometheus unreachable: connection refused"
    errored = {**RECORDED, "counters": {**RECORDED["counters"], "errors": 4, "consecutiveErrors": 2},
               "lastAnalysis": {**RECORDED["lastAnalysis"], "phase": "Inconclusive", "gates": [
                   {"gate": "latency.e2e", "bucket": "all", "phase": "Error", "threshold": 20, "message": message}]}}
    text = format_status(lad(errored))
    assert f"Analysis:   Inconclusive at 2026-12-01T15:10:00Z ({message})" in text
    assert "errors 4 (2 in a row)" in text
    assert rows_of(text)["latency.e2e"] == ["latency.e2e", "all", "Error", "-", "-", "20"]


def test_status_without_rollout_and_with_an_invalid_spec() -> None:
    assert "no rollout status yet" in format_status(lad(status=None))
    text = format_status(lad(spec={"replicas": "many"}))  # InvalidSpec: the status still reads
    assert "step 2;" in text and "cost / 1M tokens  " in text


def test_table_aligns_columns() -> None:
    assert table([["A", "BB", "C"], ["AAA", "B", "CCCC"]]) == "A    BB  C\nAAA  B   CCCC"


def test_request_values_are_times_the_operator_reads_as_new_requests() -> None:
    first, second = request_value(datetime(2026, 12, 1, 15, 0, 0, 1, UTC)), request_value()
    assert parse_time(first) == datetime(2026, 12, 1, 15, 0, 0, 1, UTC)
    assert pending_requests({"localattn.dev/pause": second}, ManualAcknowledged()) == [ManualRequest("pause", second)]
    assert pending_requests({"localattn.dev/pause": second}, ManualAcknowledged(pause=second)) == []


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in kubectl that records its argv (the real one is exercised by test_e2e_kubectl_plugin)."""
    log = tmp_path / "argv.json"
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      "print('{}')\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("KUBECTL", str(script))
    return log


@pytest.mark.parametrize("argv", [
    ["--kubeconfig", "/k", "-n", "team-a", "--context", "dev", "pause", "llm"],
    ["pause", "llm", "--kubeconfig", "/k", "--namespace", "team-a", "--context", "dev"],
    ["-n", "other", "pause", "--kubeconfig", "/k", "-n", "team-a", "--context=dev", "llm"],
])
def test_verbs_annotate_with_passthrough_flags_before_or_after_the_verb(fake_kubectl: Path, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    sent = json.loads(fake_kubectl.read_text())
    assert sent[:6] == ["--kubeconfig", "/k", "--context", "dev", "--namespace", "team-a"]
    assert sent[6:10] == ["annotate", "localattndeployments.localattn.dev", "llm", "--overwrite"]
    key, value = sent[10].split("=", 1)
    assert key == "localattn.dev/pause" and parse_time(value) is not None
    assert sent[11] == "--request-timeout=30s"


def test_kubectl_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECTL", os.path.join("/nonexistent", "kubectl"))
    args = build_parser().parse_args(["abort", "llm"])
    assert args.func(args) == 127
    assert "not found" in capsys.readouterr().err
