"""``benchmarks/device_check.sh`` is only run for real on a GPU machine; here its dry run proves the script and
its Python side work end to end (CPU, TRITON_INTERPRET=1, tiny shapes) and write the promised files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]


def test_device_check_dry_run_writes_results(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh"), str(tmp_path), "--dry-run"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "kernels_gpu.json").read_text())
    assert result["correctness"] and all(row["ok"] for row in result["correctness"])
    assert {row["kind"] for row in result["timings"]} == {"decode", "prefill"}
    assert all("local_ms" in row for row in result["timings"])
    assert "| decode |" in (tmp_path / "kernels_gpu.md").read_text()
