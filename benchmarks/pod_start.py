"""Start-up of one tiny-model vLLM pod in the dev cluster's process mode: cold and warm compile cache, RSS.

    PYTHONPATH=operator:runtime:kernels:devcluster:cli .venv/bin/python benchmarks/pod_start.py [--state-dir D]

Brings up (or reuses) a process-mode dev cluster in the state dir, then runs the operator's rendered pod
template for the tiny random model (`pvc://models/tiny-random`, 2 CPUs, `--kv-cache-memory-bytes 256Mi`,
torch.compile on, i.e. no `--enforce-eager`) one pod at a time: first with an empty vLLM cache (cold), then
again with the cache the first run filled (warm: what every later pod of the machine gets from the node's
shared `VLLM_CACHE_ROOT`). For each run it prints the seconds from `kubectl apply` to `/health` answering
and to the pod reported Ready (the operator's probes: startup every 10 s, readiness every 5 s), and the RSS
of the pod's whole process tree (API server + engine core) once Ready.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from localattn_dev import procs
from localattn_dev.controlplane import up
from localattn_dev.paths import cache_dir
from localattn_dev.podlayout import pods_dir, record_name
from localattn_dev.testing import kubectl, kubectl_json, temp_namespace


def manifests(ns: str, cache: Path, run: str, extra_args: list[str]) -> list[dict[str, Any]]:
    from localattn_operator.models import LocalAttnDeploymentSpec
    from localattn_operator.render import Owner, render_children

    spec = LocalAttnDeploymentSpec.model_validate(
        {
            "replicas": 1,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": "tiny"},
            "runtime": {
                "image": "localattn/vllm-runtime:0.1.0",
                "maxModelLen": 2048,
                "dtype": "float32",
                "extraArgs": extra_args,
                "env": [{"name": "VLLM_CACHE_ROOT", "value": str(cache)}],
                "resources": {"requests": {"nvidia.com/gpu": 1, "cpu": "2"}, "limits": {"nvidia.com/gpu": 1}},
            },
            "localAttention": {"enabled": True, "windowSize": 64, "sinkTokens": 4, "minContextLength": 128},
            "memory": {"kvCacheMemory": "256Mi"},
        }
    )
    children = [c for c in render_children(Owner(f"tiny-{run}", ns, "0"), spec) if c["kind"] != "Service"]
    for child in children:
        child["metadata"].pop("ownerReferences", None)
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"models-{ns}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": "/var/lib/localattn/models"}, "claimRef": {"namespace": ns, "name": "models"}},
    }  # fmt: skip
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"models-{ns}",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    return [pv, pvc, *children]


def health(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def one_run(
    kubeconfig: Path, state_dir: Path, ns: str, cache: Path, run: str, extra_args: list[str]
) -> dict[str, float]:
    items = manifests(ns, cache, run, extra_args)
    (deployment,) = [m["metadata"]["name"] for m in items if m["kind"] == "Deployment"]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    t0 = time.monotonic()
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=kubeconfig, input=body)
    selector = f"localattn.dev/deployment=tiny-{run}"
    health_at = ready_at = None
    while ready_at is None and time.monotonic() - t0 < 600:
        items = kubectl_json("get", "pods", "-n", ns, "-l", selector, kubeconfig=kubeconfig)["items"]
        for pod in items:
            ip = pod.get("status", {}).get("podIP")
            if health_at is None and ip and health(ip):
                health_at = time.monotonic() - t0
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conditions.get("Ready") == "True":
                ready_at = time.monotonic() - t0
                record = procs.load(pods_dir(state_dir), record_name(pod["metadata"]["uid"], "vllm"))
                rss = procs.session_rss(record) if record else 0
                pss = procs.session_pss(record) if record else 0
        time.sleep(0.25)
    if ready_at is None:
        raise TimeoutError(f"run {run}: not Ready within 600 s")
    kubectl("delete", "deployment", deployment, "-n", ns, "--wait=true", kubeconfig=kubeconfig, timeout=120)
    return {
        "health_s": round(health_at or ready_at, 1),
        "ready_s": round(ready_at, 1),
        "rss_gib": round(rss / 2**30, 2),
        "pss_gib": round(pss / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "localattn-pod-start")
    parser.add_argument(
        "--extra-arg", action="append", default=[], help="appended to vllm serve (repeatable)"
    )
    args = parser.parse_args()
    info = up(
        args.state_dir,
        nodes=1,
        gpus_per_node=2,
        node_mode="process",
        use_existing=False,
        models=("tiny-random",),
    )
    # Not under /tmp: the pod mounts an emptyDir at /tmp, and paths under a mountPath are the pod's own.
    cache = Path(tempfile.mkdtemp(prefix="bench-vllm-cache-", dir=cache_dir()))
    try:
        with temp_namespace(info.kubeconfig, prefix="podstart-") as ns:
            results = {
                run: one_run(info.kubeconfig, info.state_dir, ns, cache, run, args.extra_arg)
                for run in ("cold", "warm")
            }
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
