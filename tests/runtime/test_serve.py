"""`vllm serve` (the real CLI, a subprocess on a free loopback port) run exactly as the operator's pod runs it:
the command-line flags and the plugin's config file are the ones the operator renders for a LocalAttnDeployment
(model path, host and port swapped for local ones). The OpenAI endpoints answer, /metrics carries vLLM's and
our metrics, bad plugin configuration fails fast naming the field, and an over-long prompt is a 400."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev.procs import stop_child

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_LEN = 1024
WINDOW, SINKS = 64, 4
SPEC: dict[str, Any] = {
    "model": {"uri": "pvc://models/tiny", "servedModelName": "tiny"},
    "runtime": {"maxModelLen": MAX_LEN, "extraArgs": ["--enforce-eager", "--no-enable-prefix-caching"]},
    "localAttention": {"windowSize": WINDOW, "sinkTokens": SINKS, "globalLayers": {"indices": [0]}},
}
VLLM = str(Path(sys.executable).with_name("vllm"))


def _rendered() -> tuple[list[str], str]:
    """The operator's `vllm serve` arguments and `localattn.json` for SPEC."""
    from localattn_operator.render import Owner, render_children
    from localattn_operator.validation import validate_spec

    kids = {c["kind"]: c for c in render_children(Owner("tiny", "default", "uid"), validate_spec(SPEC))}
    (container,) = kids["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"]
    return list(container["args"]), str(kids["ConfigMap"]["data"]["localattn.json"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALATTN_CONFIG")}
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}, **extra)
    return env


def _serve_args(model: Path, port: int) -> list[str]:
    args = _rendered()[0]
    args[0] = str(model)
    # The operator renders `--host $(POD_IP)` (downward API); kubelet expands it from the container's env.
    assert args[args.index("--host") + 1] == "$(POD_IP)"
    args = [a.replace("$(POD_IP)", "127.0.0.1") for a in args]
    args[args.index("--port") + 1] = str(port)
    return [VLLM, "serve", *args]


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(tiny_random_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serve")
    cfg_file = tmp / "localattn.json"  # what the operator's ConfigMap mounts
    cfg_file.write_text(_rendered()[1])
    port = _free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(_serve_args(tiny_random_model, port), env=_env(LOCALATTN_CONFIG=str(cfg_file)),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vllm serve exited {proc.returncode}:\n{(tmp / 'serve.log').read_text()[-5000:]}")
            try:
                if _http("GET", f"{url}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("vllm serve did not become healthy in 300 s")
            time.sleep(1)
        yield url
    finally:
        stop_child(proc)
        log.close()


def test_completions(server: str) -> None:
    status, body = _http("POST", f"{server}/v1/completions",
                         {"model": "tiny", "prompt": "def main():\n" * 60, "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    out = json.loads(body)
    assert out["usage"]["completion_tokens"] == 8
    assert out["usage"]["prompt_tokens"] > WINDOW + SINKS  # local layers engaged


def test_chat_completions(server: str) -> None:
    status, body = _http("POST", f"{server}/v1/chat/completions",
                         {"model": "tiny", "messages": [{"role": "user", "content": "import os"}], "max_tokens": 4})
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"


def test_prompt_longer_than_max_model_len_is_a_400(server: str) -> None:
    status, body = _http("POST", f"{server}/v1/completions",
                         {"model": "tiny", "prompt": [5] * (MAX_LEN + 10), "max_tokens": 4})
    assert status == 400, body
    assert _http("GET", f"{server}/health")[0] == 200  # and the server lives on


def _metrics(server: str) -> str:
    status, text = _http("GET", f"{server}/metrics")
    assert status == 200
    return text


def _value(text: str, name: str) -> float:
    vals = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")]
    assert vals, f"{name} not in /metrics"
    return sum(vals)


def test_metrics_show_vllm_and_localattn(server: str) -> None:
    # A long request so that local layers free blocks (block size 128: > 2 blocks beyond sinks + window).
    status, body = _http("POST", f"{server}/v1/completions",
                         {"model": "tiny", "prompt": [5] * 700, "max_tokens": 4, "temperature": 0})
    assert status == 200, body
    text = _metrics(server)
    for name in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens"):
        assert name in text, name
    info = [line for line in text.splitlines() if line.startswith("localattn_config_info")]
    assert info and 'window="64"' in info[0], info
    assert _value(text, "localattn_kv_blocks_freed_total") >= 3 * ((700 - 64) // 128 - 1)


def _series(text: str, name: str) -> dict[str, float]:
    """{label set: value} of one metric's samples (`{length_bucket="0-64"}` -> value)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def test_latency_histogram_by_prompt_length_bucket(server: str) -> None:
    """One request per bucket (W=64: 0-64 below the window, 64-256, 256-inf): each lands in its own bucket, and
    the buckets together count (and time) exactly what vLLM's own e2e histogram does."""
    name = "localattn_request_latency_seconds"
    before = _metrics(server)
    for n in (10, 100, 300):
        status, body = _http("POST", f"{server}/v1/completions",
                             {"model": "tiny", "prompt": [5] * n, "max_tokens": 2, "temperature": 0})
        assert status == 200, body
    want = {f'{{length_bucket="{b}"}}': 1.0 for b in ("0-64", "64-256", "256-inf")}
    deadline = time.monotonic() + 10  # vLLM records a request's stats just after its response may have left
    while True:
        after = _metrics(server)
        delta = {k: v - _series(before, name + "_count").get(k, 0.0)
                 for k, v in _series(after, name + "_count").items()}
        same = _value(after, name + "_count") == _value(after, "vllm:e2e_request_latency_seconds_count")
        if (delta == want and same) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert delta == want, delta
    assert same, (_value(after, name + "_count"), _value(after, "vllm:e2e_request_latency_seconds_count"))
    assert _value(after, name + "_sum") == pytest.approx(_value(after, "vllm:e2e_request_latency_seconds_sum"),
                                                         rel=1e-6)
    assert '# TYPE localattn_request_latency_seconds histogram' in after


@pytest.mark.parametrize(("config", "field"), [
    ({"windowSize": 0}, "windowSize"),  # (every field's validation: test_config.py)
    ({"globalLayers": {"indices": [0, 9]}}, "globalLayers.indices"),  # the tiny model has 4 layers
])
def test_bad_config_fails_fast_naming_the_field(tiny_random_model: Path, config: dict[str, Any], field: str) -> None:
    proc = subprocess.run(_serve_args(tiny_random_model, _free_port()),
                          env=_env(LOCALATTN_CONFIG_JSON=json.dumps(config)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert f"localattn config: {field}" in proc.stdout + proc.stderr



def test_the_operators_paired_client_reads_greedy_token_ids_from_a_real_server(server: str) -> None:
    """What the operator's paired comparison sends (providers/completions.py) against real vLLM: greedy token
    ids with their logprobs, the same ones twice, with and without the served model name."""
    from localattn_operator.paired import Pair, score
    from localattn_operator.providers.completions import greedy

    prompt = "def fibonacci(n):\n    "
    length, first = greedy(server, "tiny", prompt, 8)
    _, again = greedy(server, None, prompt, 8)
    assert length > 3 and 1 <= len(first.tokens) <= 8 and all(isinstance(t, int) for t in first.tokens)
    assert all(v <= 0 for v in first.logprobs) and any(v < 0 for v in first.logprobs)
    assert score(Pair(length, first, again)).agreement == 1.0
