"""Serving throughput as users see it: `vllm serve` as the operator runs it, loaded by vLLM's own client.

For each variant, one server at a time, variants interleaved (A B C D A B C D ... for `--rounds`), prefix
caching off, the same KV budget (`--kv-cache-memory-bytes`, from the LAD's spec.memory.kvCacheMemory) for every
variant; `vllm bench serve` sweeps the concurrency (random prompts of `--input-len` tokens, `--output-len`
tokens out, EOS ignored) while this script scrapes the server's /metrics every 0.2 s:
  stock      full attention (plugin off)
  local+G    the plugin with global layers (a calibration plan file: `--plan`, else every 6th layer)
  all-local  the plugin, no global layer
  vllm-swa   vLLM's native sliding window (the weights loaded as Mistral, sliding_window=W), the reference kernel
Reports output tokens/s, TTFT and TPOT p50/p99, goodput (`--goodput`, vLLM's SLO definition), the peak number
of running requests, preemptions and peak KV usage; writes `benchmarks/results/serving.json` (`--out`).

    .venv/bin/python benchmarks/serving.py --model DIR [--input-len 4096] [--output-len 128]
        [--concurrency 1 4 16] [--num-prompts 32] [--kv-cache-memory 2Gi] [--rounds 1] [--variants ...]
    # SmolLM2: `localattn model smollm2 --out DIR`. Long runs: hours on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from localattn_dev.procs import stop_child

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serviceproxy import commit, cpu_model

ROOT = Path(__file__).resolve().parents[1]
VLLM = str(Path(sys.executable).with_name("vllm"))
VARIANTS = ("stock", "local+G", "all-local", "vllm-swa")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_attention(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """spec.localAttention of the variant (the operator renders it into the plugin's configuration)."""
    base = {"windowSize": args.window, "sinkTokens": args.sinks}
    if variant == "local+G":
        if args.plan:
            return {**base, "globalLayers": {"indices": json.loads(Path(args.plan).read_text())["globalLayers"]}}
        return {**base, "globalLayers": {"every": 6}}
    if variant == "all-local":
        return {**base, "globalLayers": {"indices": []}}
    return {**base, "enabled": False}  # stock and vllm-swa: the plugin stays off


def serve_command(model: Path, variant: str, args: argparse.Namespace, port: int) -> tuple[list[str], str]:
    """The operator's rendered `vllm serve` args and localattn.json for this variant, on a loopback port."""
    from localattn_operator.render import Owner, render_children
    from localattn_operator.validation import validate_spec

    spec = validate_spec({
        "model": {"uri": "pvc://models/m"},
        "runtime": {"maxModelLen": args.input_len + args.output_len + 64, "extraArgs": ["--no-enable-prefix-caching"]},
        "localAttention": local_attention(variant, args),
        "memory": {"kvCacheMemory": args.kv_cache_memory},
    })
    kids = {c["kind"]: c for c in render_children(Owner("bench", "default", "u"), spec)}
    (container,) = kids["Deployment"]["spec"]["template"]["spec"]["containers"]
    cmd = [a.replace("$(POD_IP)", "127.0.0.1") for a in container["args"]]
    cmd[0] = str(model)
    cmd[cmd.index("--port") + 1] = str(port)
    return [VLLM, "serve", *cmd], str(kids["ConfigMap"]["data"]["localattn.json"])


def mistral_copy(model: Path, out: Path, window: int) -> Path:
    from localattn_runtime.tinymodel import materialize

    materialize(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": window})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


class MetricsScraper(threading.Thread):
    """Peaks of vLLM's gauges and the last value of its counters, from /metrics every `period` seconds."""

    GAUGES = ("vllm:num_requests_running", "vllm:kv_cache_usage_perc")
    COUNTERS = ("vllm:num_preemptions_total",)

    def __init__(self, url: str, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.stop = url, period, threading.Event()
        self.peak: dict[str, float] = dict.fromkeys(self.GAUGES, 0.0)
        self.last: dict[str, float] = dict.fromkeys(self.COUNTERS, 0.0)

    def sample(self) -> None:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for name in (*self.GAUGES, *self.COUNTERS):
            vals = [float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
            if vals and name in self.peak:
                self.peak[name] = max(self.peak[name], sum(vals))
            elif vals:
                self.last[name] = sum(vals)

    def run(self) -> None:
        while not self.stop.wait(self.period):
            with contextlib.suppress(OSError):
                self.sample()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"vllm serve not healthy after {timeout:.0f} s (log {log})")


def run_variant(model: Path, variant: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Start one server, sweep the concurrency with `vllm bench serve`, stop it."""
    served = mistral_copy(model, work / "mistral", args.window) if variant == "vllm-swa" else model
    port = _free_port()
    cmd, config = serve_command(served, variant, args, port)
    cfg_file = work / f"{variant}.json"
    cfg_file.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALATTN_CONFIG")}
    env.update({"LOCALATTN_CONFIG": str(cfg_file), "TOKENIZERS_PARALLELISM": "false"})
    log = work / f"{variant}.log"
    url = f"http://127.0.0.1:{port}"
    rows = []
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, url, log, args.startup_timeout)
            for conc in args.concurrency:
                scraper = MetricsScraper(url)
                scraper.sample()
                preempted_before = scraper.last["vllm:num_preemptions_total"]
                scraper.start()
                name = f"{variant}-c{conc}.json".replace("+", "")
                bench = [VLLM, "bench", "serve", "--backend", "vllm", "--base-url", url, "--tokenizer", str(served),
                         "--dataset-name", "random", "--random-input-len", str(args.input_len),
                         "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
                         "--num-prompts", str(args.num_prompts), "--max-concurrency", str(conc), "--ignore-eos",
                         "--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,99", "--seed", "0",
                         "--save-result", "--result-dir", str(work), "--result-filename", name, "--disable-tqdm",
                         *(["--goodput", *args.goodput] if args.goodput else [])]
                subprocess.run(bench, check=True, timeout=args.bench_timeout, stdout=subprocess.DEVNULL)
                scraper.stop.set()
                scraper.join()
                scraper.sample()
                res = json.loads((work / name).read_text())
                rows.append({
                    "variant": variant, "concurrency": conc, "output_tok_s": res.get("output_throughput"),
                    "ttft_p50_ms": res.get("p50_ttft_ms"), "ttft_p99_ms": res.get("p99_ttft_ms"),
                    "tpot_p50_ms": res.get("p50_tpot_ms"), "tpot_p99_ms": res.get("p99_tpot_ms"),
                    "goodput_req_s": res.get("request_goodput"), "completed": res.get("completed"),
                    "peak_running": scraper.peak["vllm:num_requests_running"],
                    "peak_kv_usage": scraper.peak["vllm:kv_cache_usage_perc"],
                    "preemptions": scraper.last["vllm:num_preemptions_total"] - preempted_before,
                })
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_child(proc, grace=60)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--plan", help="calibration plan for local+G (default: every 6th layer global)")
    parser.add_argument("--input-len", type=int, default=4096)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--kv-cache-memory", default="2Gi", help="the same KV budget for every variant")
    parser.add_argument("--goodput", nargs="*", default=["ttft:10000", "tpot:500"], help="SLOs, KEY:ms")
    parser.add_argument("--rounds", type=int, default=1, help="ABAB rounds (each runs every variant once)")
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--bench-timeout", type=float, default=7200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="la-serving-") as tmp:
        for r in range(args.rounds):
            for variant in args.variants:
                work = Path(tmp) / f"r{r}-{variant}".replace("+", "")
                work.mkdir()
                rows += [{**row, "round": r} for row in run_variant(args.model, variant, args, work)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_model(), "commit": commit(),
        "started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, indent=2))
    print(f"{'variant':>10} {'conc':>5} {'out tok/s':>10} {'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} {'p99':>8} "
          f"{'goodput':>8} {'running':>8} {'preempt':>8} {'KV use':>7}")
    for row in rows:
        print(f"{row['variant']:>10} {row['concurrency']:>5} {row['output_tok_s'] or 0:>10.1f} "
              f"{row['ttft_p50_ms'] or 0:>9.0f} {row['ttft_p99_ms'] or 0:>8.0f} {row['tpot_p50_ms'] or 0:>9.1f} "
              f"{row['tpot_p99_ms'] or 0:>8.1f} {row['goodput_req_s'] or 0:>8.2f} {row['peak_running']:>8.0f} "
              f"{row['preemptions']:>8.0f} {row['peak_kv_usage']:>7.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
