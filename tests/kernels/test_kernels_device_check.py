"""``benchmarks/device_check.sh`` is only run for real on a GPU machine; here its dry run proves the script and
its Python side work end to end (CPU, TRITON_INTERPRET=1, tiny shapes) and write the promised files, with
torch's baselines (FlashAttention through SDPA, FlexAttention) checked, timed and compared."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localattn_kernels import baselines, devicecheck

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]
TORCH_BASELINES = ("sdpa_flash_full", "flex_full", "flex_local")


def test_device_check_dry_run_writes_results(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh"), str(tmp_path), "--dry-run"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "kernels_gpu.json").read_text())
    assert result["correctness"] and all(row["ok"] for row in result["correctness"])
    # Every baseline was tried: torch's ran and matched the reference under their rule; vLLM's ran or said why not.
    assert [row["case"] for row in result["baseline_checks"]] == ["decode", "prefill"]
    for row in result["baseline_checks"]:
        assert not row.get("disagree")
        assert all(row[f"{name}_err"] <= baselines.BASELINE_RTOL for name in TORCH_BASELINES)
        assert all(f"{name}_err" in row or f"{name}_error" in row for name in baselines.BASELINES)
    assert {row["kind"] for row in result["timings"]} == {"decode", "prefill"}
    for row in result["timings"]:
        assert row["local_ms"] > 0 and not row.get("disagree")
        for name in ("local_as_full", *TORCH_BASELINES):
            assert row[f"{name}/local"] == pytest.approx(row[f"{name}_ms"] / row["local_ms"], rel=0.01, abs=0.01)
        assert all(row[f"{name}_err"] <= baselines.BASELINE_RTOL for name in TORCH_BASELINES)  # vs our output
    md = (tmp_path / "kernels_gpu.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| kind |"))
    assert all(label in header for label in ("ours, W ≥ L", "FA2 (SDPA) full", "Flex full", "Flex sinks+window"))
    decode = next(line for line in md.splitlines() if line.startswith("| decode |"))
    assert decode.count("x) |") >= 4 and decode.count("|") == header.count("|")
    tests = "`pytest tests/kernels/test_kernels_triton.py tests/runtime/test_backend_gpu.py::test_local_forward_matches_reference`"
    assert f"{tests}): not run in a dry run." in md


def test_baseline_with_a_wrong_mask_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FlexAttention mask one key short of our window must fail the check against the reference."""

    def off_by_one(p: baselines.Problem, rule: str) -> Callable[[], Any]:
        return baselines._flex(baselines.Problem(**{**vars(p), "window": p.window - 1, "_dense": None}), rule)

    right = {name: baselines.BASELINES[name] for name in TORCH_BASELINES}
    monkeypatch.setattr(baselines, "BASELINES", {**right, "flex_bad": ("local", "bad", off_by_one)})
    checks = devicecheck.check_baselines("cpu", deadline=float("inf"))
    assert [row["disagree"] for row in checks] == [["flex_bad"], ["flex_bad"]]
    assert all(row[f"{name}_err"] <= baselines.BASELINE_RTOL for row in checks for name in TORCH_BASELINES)
    assert min(row["flex_bad_err"] for row in checks) > 5 * baselines.BASELINE_RTOL
