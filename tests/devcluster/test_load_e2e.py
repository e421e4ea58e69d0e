"""`localattn load` against a real `vllm serve` of the tiny random model (stock vLLM, no plugin): the
stream is answered, the prompts fall on both sides of the window, and the summary carries vLLM's figures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localattn_dev.procs import stop_child

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
VLLM = str(Path(sys.executable).with_name("vllm"))


@pytest.fixture(scope="module")
def model() -> Path:
    from localattn_runtime.tinymodel import random_model_dir

    return random_model_dir()


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("load") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALATTN_CONFIG")}
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"})
    argv = [VLLM, "serve", str(model), "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "1024", "--enforce-eager", "--no-enable-prefix-caching"]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"vllm serve exited:\n{log_path.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve not healthy in 300 s"
            time.sleep(1)
        yield url
    finally:
        stop_child(proc)


def test_load_reports_percentiles_errors_and_the_prompt_mix(server: str, model: Path, tmp_path: Path) -> None:
    saved = tmp_path / "result.json"
    argv = [sys.executable, "-m", "localattn_cli.main", "load", "--target", server, "--model", "tiny",
            "--tokenizer", str(model), "--requests", "50", "--rate", "4", "--duration", "3", "--concurrency", "3",
            "--window", "64", "--output-len", "8", "--save", str(saved)]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # rate x duration bounds the count below --requests.
    assert "requests: 12 " in out and "completed 12, errors 0" in out, out
    summary = next(line for line in out.splitlines() if line.startswith("prompts:"))
    below, above = (int(summary.split()[1]), int(summary.split(",")[1].split()[0]))
    assert below > 0 and above > 0, summary
    for metric in ("TTFT", "ITL", "E2EL"):
        assert any(line.startswith(metric) for line in out.splitlines()), out
    result = json.loads(saved.read_text())
    assert result["completed"] == 12 and len(result["input_lens"]) == 12
    assert min(result["input_lens"]) < 64 < max(result["input_lens"])
