"""Operator scale benchmark on the real local control plane.

Applies N LocalAttnDeployments (default 100) to a running operator and measures: time until every
Deployment exists and every status is Ready, per-object reconcile latency (apply -> status Ready, p50/p95),
and the operator's CPU time and peak RSS. Prints a table; targets: 100 LADs converged in < 30 s, RSS < 250 MB.

    .venv/bin/python benchmarks/operator_scale.py [--count 100] [--namespace bench]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]


def lad(name: str) -> dict[str, object]:
    return {
        "apiVersion": "localattn.dev/v1alpha1",
        "kind": "LocalAttnDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "model": {"uri": f"/opt/models/{name}"},  # baked into the image: no volume to bind
            # CPU-only pods, so that 100 of them fit the fake nodes
            "runtime": {"maxModelLen": 8192, "resources": {"limits": {"nvidia.com/gpu": 0}, "requests": {"cpu": "10m"}}},
            "localAttention": {"windowSize": 512, "sinkTokens": 4},
        },
    }


def proc_stats(pid: int) -> tuple[float, float]:
    """(cpu seconds, peak RSS MiB) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(peak.split()[1]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def histogram_quantile(metrics_text: str, name: str, q: float) -> tuple[float, int]:
    """(upper bound of the bucket holding quantile q, observation count) of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    bound = next((le for le, count in buckets if count >= q * total), float("nan"))
    return bound, int(total)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--namespace", default="bench-scale")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    from localattn_dev import controlplane, procs

    cluster = controlplane.up(nodes=4, gpus_per_node=8)
    kubeconfig = str(cluster.kubeconfig)
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml")], check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for", "condition=established", "crd/localattndeployments.localattn.dev"], check=True, capture_output=True)
    subprocess.run([*kubectl, "delete", "namespace", args.namespace, "--ignore-not-found", "--wait=true"], check=True, capture_output=True)
    subprocess.run([*kubectl, "create", "namespace", args.namespace], check=True, capture_output=True)

    metrics_port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="operator-", suffix=".log", delete=False)  # noqa: SIM115 (kept: the log outlives the run)
    operator = subprocess.Popen(
        [sys.executable, "-m", "localattn_cli.main", "operator", "run", "--namespace", args.namespace,
         "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    config.load_kube_config(config_file=kubeconfig)
    custom = client.CustomObjectsApi()
    apps = client.AppsV1Api()
    try:
        time.sleep(3)  # let the operator start watching
        idle_cpu, _ = proc_stats(operator.pid)
        applied: dict[str, float] = {}
        ready: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(args.count):
            name = f"lad-{i:04d}"
            custom.create_namespaced_custom_object("localattn.dev", "v1alpha1", args.namespace, "localattndeployments", lad(name))
            applied[name] = time.perf_counter()
        apply_done = time.perf_counter() - start
        stream = watch.Watch()
        for event in stream.stream(custom.list_namespaced_custom_object, "localattn.dev", "v1alpha1", args.namespace,
                                   "localattndeployments", timeout_seconds=int(args.timeout)):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if name not in ready and (obj.get("status") or {}).get("phase") == "Ready":
                ready[name] = time.perf_counter()
            if len(ready) == args.count:
                stream.stop()
        converged = time.perf_counter() - start
        deployments = len(apps.list_namespaced_deployment(args.namespace).items)
        cpu, rss = proc_stats(operator.pid)
        latencies = [ready[n] - applied[n] for n in ready]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        histogram = "localattn_operator_reconcile_duration_seconds"
        pass_p50, passes = histogram_quantile(exposition, histogram, 0.5)
        pass_p95, _ = histogram_quantile(exposition, histogram, 0.95)
        rows = [
            ("LADs applied", f"{args.count}", ""),
            ("apply loop", f"{apply_done:.1f} s", ""),
            ("Deployments created", f"{deployments}", f"target {args.count}"),
            ("all Ready after", f"{converged:.1f} s", "target < 30 s" + (" OK" if converged < 30 else " MISSED")),
            ("reconcile pass p50", f"<= {pass_p50:g} s", f"one observe-decide-apply-report pass ({passes} passes)"),
            ("reconcile pass p95", f"<= {pass_p95:g} s", "from the operator's own histogram"),
            ("apply -> Ready p50", f"{percentile(latencies, 0.5):.2f} s", "end to end, incl. controller-manager + scheduler"),
            ("apply -> Ready p95", f"{percentile(latencies, 0.95):.2f} s", ""),
            ("operator CPU time", f"{cpu - idle_cpu:.1f} s", f"{(cpu - idle_cpu) / converged:.0%} of one core"),
            ("operator peak RSS", f"{rss:.0f} MiB", "target < 250 MB" + (" OK" if rss < 250 else " MISSED")),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"\noperator_scale: {args.count} LocalAttnDeployments on the local control plane")
        for label, value, note in rows:
            print(f"  {label:<{width}}  {value:>10}  {note}")
        print(json.dumps({"count": args.count, "converged_s": converged, "ready": len(ready),
                          "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
                          "pass_p50_le_s": pass_p50, "pass_p95_le_s": pass_p95, "passes": passes,
                          "cpu_s": cpu - idle_cpu, "peak_rss_mib": rss}))
        return 0 if len(ready) == args.count else 1
    finally:
        procs.stop_child(operator, grace=20, group=True)
        subprocess.run([*kubectl, "delete", "namespace", args.namespace, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
