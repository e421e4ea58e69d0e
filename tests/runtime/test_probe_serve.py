"""The probe inside a real `vllm serve` with the plugin: it scores the golden set and our gauges reach /metrics."""

from __future__ import annotations

import json
import math
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
from localattn_runtime import golden, probe

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def golden_set(tiny_trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, golden.GoldenSet]:
    gold = golden.build_golden_set(tiny_trained_model, texts=2, text_tokens=512, prompts=4, max_tokens=8)
    return golden.write(gold, tmp_path_factory.mktemp("golden") / "golden.json"), gold


@pytest.fixture(scope="module")
def server(tiny_trained_model: Path, golden_set: tuple[Path, golden.GoldenSet],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` with W >= every golden text, so the probe must reproduce full attention's results."""
    port = _free_port()
    cfg = {"windowSize": 4096, "sinkTokens": 4, "probe": {"enabled": True, "intervalSeconds": 2,
                                                          "goldenSetFile": str(golden_set[0]), "maxTokens": 8}}
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    env = {**os.environ, "LOCALATTN_CONFIG_JSON": json.dumps(cfg), "VLLM_CPU_KVCACHE_SPACE": "1",
           "LOCALATTN_METRICS_DIR": str(tmp_path_factory.mktemp("metrics"))}
    cmd = [str(Path(sys.executable).parent / "vllm"), "serve", str(tiny_trained_model),
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "bfloat16", "--max-model-len", "2048",
           "--enforce-eager", "--no-enable-prefix-caching"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        client = probe.Client(url)
        deadline = time.monotonic() + 300
        while not client.ready():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not become ready"
            time.sleep(1)
        yield url
    finally:
        stop_child(proc, grace=60)


def test_probe_publishes_quality_gauges_on_vllm_metrics(server: str, tiny_trained_model: Path,
                                                        golden_set: tuple[Path, golden.GoldenSet]) -> None:
    deadline = time.monotonic() + 120
    got = _scrape(server)
    while got.get('localattn_probe_runs_total{outcome="ok"}', 0) < 1:
        assert got.get('localattn_probe_runs_total{outcome="error"}', 0) == 0, "probe run failed"
        assert time.monotonic() < deadline, "no probe run"
        time.sleep(1)
        got = _scrape(server)
    # vLLM's own metrics are still there, ours next to them
    assert "vllm:kv_cache_usage_perc" in " ".join(got)
    assert any(k.startswith("localattn_config_info{") and 'window="4096"' in k for k in got)
    assert "localattn_kv_blocks_freed_total" in got
    assert 0 <= got["localattn_probe_age_seconds"] < 30
    # the probe's perplexity is the golden texts' perplexity under full attention (HF float32 vs vLLM bf16)
    expected = _hf_perplexity(tiny_trained_model, list(golden_set[1].perplexity_texts))
    assert got["localattn_probe_perplexity"] == pytest.approx(expected, rel=0.05)
    # W >= length: the deployment reproduces the model's own greedy completions
    assert got["localattn_probe_exact_match"] >= 0.75


def _hf_perplexity(model_dir: Path, texts: list[str]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from localattn_runtime import tinymodel

    tok = tinymodel.load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            total += float(-logp.gather(-1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
    return math.exp(total / n)
