"""The autoscaler under a load ramp (up, hold, down), full attention and local attention side by side.

One dev cluster of our own (node agent process mode: real vLLM CPU pods, real Prometheus), the operator as a
process with that Prometheus, and two LADs of the same tiny model and KV budget that differ only in
spec.localAttention: `full` (off) and `local` (sinks + window). Both carry the same spec.autoscaling (a KV
cache usage target and a waiting-requests target). The ramps are interleaved (full, local, full, local ... for
`--rounds`), one LAD loaded at a time, in the same run.

The ramp uses the real load client (`localattn load`, i.e. `vllm bench serve`). Clients of `--concurrency` each
start one every `--step` seconds up to `--clients`, all are held for `--hold` s, then they stop one every
`--step` s. Prompts centre on `--prompt-len` tokens, far beyond the window, so full attention's KV grows with
the prompt while local attention's stays bounded. Every `--sample` s the script records:
- the LAD's spec.replicas and ready replicas;
- `needed`, the count the autoscaler's own rule recommends for the load measured at that instant. This uses
  the operator's `measure_load` over the same Prometheus, then `recommendations`, clamped to the bounds,
  without stabilisation, rate limit or delay. Over- and under-provisioning are measured against it, so
  they show what the windows, the delay and pod start-up cost.

Reported per ramp:
- time to scale up: from `needed` first above minReplicas to spec.replicas first reaching the peak of `needed`
  (the decision), and to ready replicas first reaching it (the decision plus a vLLM pod's start);
- time to scale down: from `needed` last falling back to minReplicas to spec.replicas back at minReplicas
  (the load falls before the last client stops);
- over- and under-provisioned replica-seconds: the sum over samples of max(0, ready - needed) x dt, and
  of max(0, needed - ready) x dt;
- p95 of vLLM's end-to-end latency over the ramp (Prometheus, the analysis' p95_e2e query).

It writes `benchmarks/results/autoscaling.json` (`--out`). With the defaults it takes 10-20 min on 2 shared
cores (each ramp waits for pods to start and for the scale-down delay). Run it under `nice -n 10`.

    .venv/bin/python benchmarks/autoscaling.py [--rounds 1] [--clients 3] [--concurrency 4] [--step 20]
        [--hold 60] [--client-requests 400] [--prompt-len 512] [--kv-cache-memory 64Mi] [--max-replicas 3]
        [--state-dir DIR]

A client sends nothing until vLLM's client has built its prompts (seconds to tens of seconds on a busy
machine), so the offered load lags the ramp's schedule; `needed` is measured from the load the servers see,
so the provisioning figures do not depend on that lag.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localattn_dev.controlplane import down, up
from localattn_dev.devurls import url_of
from localattn_dev.procs import stop_child
from localattn_dev.testing import kubectl, kubectl_json, wait_for
from localattn_operator.autoscaling_signals import recommendations
from localattn_operator.measure import measure_load
from localattn_operator.metrics_provider import ProviderError
from localattn_operator.models import LocalAttnDeploymentSpec
from localattn_operator.providers.prometheus import PrometheusProvider
from localattn_operator.validation import validate_spec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NS = "autoscaling-bench"
VARIANTS = ("full", "local")


def lad(name: str, local: bool, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": "localattn.dev/v1alpha1", "kind": "LocalAttnDeployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": name},
            "runtime": {
                "maxModelLen": 4 * args.prompt_len, "dtype": "float32",
                "extraArgs": ["--enforce-eager", "--max-num-seqs", str(args.max_num_seqs)],
                "env": [{"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"}],
                "resources": {"requests": {"nvidia.com/gpu": 1, "cpu": "1", "memory": "3Gi"},
                              "limits": {"nvidia.com/gpu": 1, "memory": "3Gi"}},
            },
            "localAttention": {"enabled": local, "windowSize": args.window, "sinkTokens": 4, "minContextLength": 128},
            "memory": {"kvCacheMemory": args.kv_cache_memory},
            "analysis": {"provider": {"prometheus": {}}},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": args.max_replicas,
                "targets": {"kvCacheUsage": args.kv_target, "waitingRequestsPerReplica": args.waiting_target},
                "scaleUp": {"stabilizationWindowSeconds": args.up_window},
                "scaleDown": {"stabilizationWindowSeconds": args.down_window, "delaySeconds": args.down_delay},
            },
        },
    }  # fmt: skip


def model_volume() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"models-{NS}"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "hostPath": {"path": "/var/lib/localattn/models"}, "claimRef": {"namespace": NS, "name": "models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"models-{NS}",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip


class Bench:
    def __init__(self, args: argparse.Namespace, state_dir: Path):
        self.args, self.state_dir = args, state_dir
        self.kubeconfig: Path | None = None
        self.prometheus = ""
        self.operator: subprocess.Popen[bytes] | None = None
        self.clients_started = 0

    def kubectl_json(self, *a: str) -> Any:
        return kubectl_json(*a, kubeconfig=str(self.kubeconfig))

    def start(self) -> None:
        info = up(self.state_dir, nodes=1, gpus_per_node=2 * self.args.max_replicas, node_mode="process",
                  use_existing=False, models=("tiny-random",))
        self.kubeconfig = Path(info.kubeconfig)
        kubectl("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml"), kubeconfig=self.kubeconfig)
        kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/localattndeployments.localattn.dev",
                kubeconfig=self.kubeconfig)
        self.prometheus = str(wait_for(lambda: url_of("prometheus", state_dir=self.state_dir), timeout=30,
                                       message="Prometheus"))
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LOCALATTN_PROMETHEUS_URL": self.prometheus,
               "LOCALATTN_AUTOSCALE_INTERVAL_SECONDS": str(self.args.interval),
               "LOCALATTN_AUTOSCALE_WINDOW_SECONDS": str(self.args.load_window)}
        log = (self.state_dir / "operator.log").open("wb")
        self.operator = subprocess.Popen([sys.executable, "-m", "localattn_cli.main", "operator", "run",
                                          "--metrics-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        kubectl("create", "namespace", NS, kubeconfig=self.kubeconfig)
        body = {"apiVersion": "v1", "kind": "List",
                "items": [*model_volume(), *(lad(v, v == "local", self.args) for v in VARIANTS)]}
        kubectl("apply", "-n", NS, "-f", "-", kubeconfig=self.kubeconfig, input=json.dumps(body))
        for v in VARIANTS:
            wait_for(lambda: self.status(v).get("ready") == "1/1" or None, timeout=900, interval=3,  # noqa: B023
                     message=f"{v}: one ready pod")
            self.warm_up(v)

    def stop(self) -> None:
        if self.operator is not None:
            stop_child(self.operator)
        down(self.state_dir, purge=True)

    def lad_object(self, name: str) -> dict[str, Any]:
        return dict(self.kubectl_json("get", "lad", name, "-n", NS))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.lad_object(name).get("status") or {})

    def needed(self, name: str, spec: LocalAttnDeploymentSpec, revision: str, ready: int) -> int | None:
        """The autoscaler's own rule on the load measured now, clamped, unstabilised (None: no data)."""
        assert spec.autoscaling is not None
        samples = measure_load(spec, NS, name, {revision: ready}, self.args.load_window, self.prometheus)
        recs = [r.replicas for r in recommendations(spec.autoscaling.targets, samples, max(ready, 1))
                if r.replicas is not None]
        if not recs:
            return None
        return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, max(recs)))

    def p95(self, name: str, revision: str, seconds: float, end: datetime) -> float | None:
        """vLLM's e2e p95 over the `seconds` before `end` (the ramp), as the analysis' p95_e2e query computes it."""
        try:
            params = {"namespace": NS, "lad": name, "revision": revision}
            return PrometheusProvider(self.prometheus, at=end).query("p95_e2e", params, seconds)
        except ProviderError:
            return None

    def load_argv(self, name: str, requests: int) -> list[str]:
        from localattn_runtime.tinymodel import random_model_dir

        url = wait_for(lambda: url_of(name, NS, self.state_dir), timeout=30, message="the Service address")
        a = self.args
        return [sys.executable, "-m", "localattn_cli.main", "load", "--target", str(url), "--model", name,
                "--tokenizer", str(random_model_dir()), "--requests", str(requests), "--concurrency",
                str(a.concurrency), "--window", str(a.prompt_len), "--spread", "0.25", "--output-len", str(a.output_len)]

    def warm_up(self, name: str) -> None:
        """A few requests to completion first: the client works and the server has served (else: fail loudly)."""
        done = subprocess.run(self.load_argv(name, 4), capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or "completed 4, errors 0" not in done.stdout:
            raise RuntimeError(f"warm-up load on {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def client(self, name: str) -> subprocess.Popen[bytes]:
        self.clients_started += 1
        log = (self.state_dir / f"load-{name}-{self.clients_started}.log").open("wb")
        return subprocess.Popen(self.load_argv(name, self.args.client_requests), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def ramp(self, name: str) -> dict[str, Any]:
        a = self.args
        obj = self.lad_object(name)
        spec = validate_spec(obj["spec"])
        revision = obj["status"]["currentRevision"]
        clients: list[subprocess.Popen[bytes]] = []
        samples: list[dict[str, Any]] = []
        start = time.monotonic()
        up_end = start + a.step * a.clients
        hold_end = up_end + a.hold
        stopped_at: float | None = None
        stopped_wall = datetime.now(UTC)
        try:
            while True:
                now = time.monotonic()
                wanted = (min(a.clients, int((now - start) // a.step) + 1) if now < up_end else a.clients
                          if now < hold_end else max(0, a.clients - int((now - hold_end) // a.step) - 1))
                while len(clients) < wanted:
                    clients.append(self.client(name))
                while len(clients) > wanted:
                    stop_child(clients.pop(), group=True)  # and the `vllm bench serve` it runs
                if wanted == 0 and stopped_at is None and now >= hold_end:
                    stopped_at, stopped_wall = now, datetime.now(UTC)
                obj = self.lad_object(name)
                status = obj.get("status") or {}
                ready = int(status.get("readyReplicas") or 0)
                samples.append({"t": round(now - start, 1), "clients": wanted, "replicas": int(obj["spec"]["replicas"]),
                                "ready": ready, "needed": self.needed(name, spec, revision, ready)})
                back = samples[-1]["replicas"] == spec.autoscaling.min_replicas if spec.autoscaling else True
                if stopped_at is not None and (back or now - stopped_at > a.down_window + a.down_delay + 120):
                    break
                time.sleep(max(0.0, a.sample - (time.monotonic() - now)))
        finally:
            for c in clients:
                stop_child(c, group=True)
        ramp_seconds = (stopped_at or time.monotonic()) - start
        return summarize(name, samples, stopped_at - start if stopped_at else None, spec.autoscaling.min_replicas
                         if spec.autoscaling else 1, self.p95(name, revision, ramp_seconds, stopped_wall), a.sample)


def summarize(name: str, samples: list[dict[str, Any]], stopped: float | None, minimum: int, p95: float | None,
              dt: float) -> dict[str, Any]:
    """The ramp's figures from its samples (pure: see the module docstring for the definitions)."""
    known = [s for s in samples if s["needed"] is not None]
    over = sum(max(0, s["ready"] - s["needed"]) for s in known) * dt
    under = sum(max(0, s["needed"] - s["ready"]) for s in known) * dt
    peak = max((s["needed"] for s in known), default=minimum)
    asked = next((s["t"] for s in known if s["needed"] > minimum), None)

    def first(after: float | None, ok: Any) -> float | None:
        return next((s["t"] for s in samples if after is not None and s["t"] >= after and ok(s)), None)

    decided = first(asked, lambda s: s["replicas"] >= peak)
    reached = first(asked, lambda s: s["ready"] >= peak)
    # Scale-down: from the need's last fall back to minReplicas (the load may fall before the last client stops).
    last_high = max((s["t"] for s in known if s["needed"] > minimum), default=None)
    relaxed = first(last_high, lambda s: s["t"] > (last_high or 0))
    above = any(s["replicas"] > minimum for s in samples)
    back = first(relaxed, lambda s: s["replicas"] == minimum) if above else None

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 1) if a is not None and b is not None else None

    return {
        "variant": name, "peak_needed": peak, "max_replicas_seen": max(s["replicas"] for s in samples),
        "scale_up_decided_seconds": span(asked, decided), "scale_up_ready_seconds": span(asked, reached),
        "scale_down_seconds": span(relaxed, back), "load_stopped_at": stopped,
        "over_replica_seconds": round(over, 1), "under_replica_seconds": round(under, 1),
        "p95_e2e_seconds": round(p95, 3) if p95 is not None and math.isfinite(p95) else None,
        "samples_without_data": len(samples) - len(known), "samples": samples,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--clients", type=int, default=3, help="load clients at the ramp's top")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per client")
    p.add_argument("--step", type=float, default=20.0, help="seconds between clients starting (and stopping)")
    p.add_argument("--hold", type=float, default=60.0)
    p.add_argument("--client-requests", type=int, default=400,
                   help="requests per client (vllm bench serve builds them all before sending: keep it modest)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--window", type=int, default=64, help="the local LAD's windowSize")
    p.add_argument("--kv-cache-memory", default="64Mi")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--kv-target", type=float, default=0.7)
    p.add_argument("--waiting-target", type=float, default=2.0)
    p.add_argument("--up-window", type=int, default=10)
    p.add_argument("--down-window", type=int, default=30)
    p.add_argument("--down-delay", type=int, default=45)
    p.add_argument("--interval", type=float, default=5.0, help="the operator's decision interval")
    p.add_argument("--load-window", type=float, default=10.0, help="the load query's smoothing window")
    p.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "autoscaling.json")
    args = p.parse_args()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="la-autoscaling-bench-"))
    bench = Bench(args, state_dir)
    ramps: list[dict[str, Any]] = []
    try:
        bench.start()
        for r in range(args.rounds):
            for v in VARIANTS:
                print(f"round {r + 1}: ramp on {v} ...", flush=True)
                ramps.append({"round": r + 1, **bench.ramp(v)})
    finally:
        bench.stop()
    print_table(ramps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(), "args": {k: str(v) for k, v in
                                                                                      vars(args).items()},
                                    "ramps": ramps}, indent=1))
    print(f"wrote {args.out}")
    return 0


def print_table(ramps: list[dict[str, Any]]) -> None:
    print(f"\n{'variant':<8} {'round':>5} {'peak':>4} {'max':>3} {'up (spec) s':>11} {'up (ready) s':>12} "
          f"{'down s':>7} {'over r*s':>9} {'under r*s':>9} {'p95 s':>7}")
    for row in ramps:
        print(f"{row['variant']:<8} {row['round']:>5} {row['peak_needed']:>4} {row['max_replicas_seen']:>3} "
              f"{_f(row['scale_up_decided_seconds']):>11} {_f(row['scale_up_ready_seconds']):>12} "
              f"{_f(row['scale_down_seconds']):>7} {row['over_replica_seconds']:>9} {row['under_replica_seconds']:>9} "
              f"{_f(row['p95_e2e_seconds']):>7}")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    sys.exit(main())
