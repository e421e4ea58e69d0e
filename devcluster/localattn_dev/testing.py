"""Helpers the e2e suites share: a session cluster, a kubectl runner, polling, throwaway namespaces.

info = ensure_cluster()                      # started once, reused by later sessions while healthy
with temp_namespace(info.kubeconfig) as ns:
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=info.kubeconfig, input=manifest)
    wait_for(lambda: pod_is_ready(), timeout=30, message="pod ready")
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from localattn_dev.assets import kubectl_path
from localattn_dev.controlplane import ClusterInfo, down, up
from localattn_dev.paths import cache_dir
from localattn_dev.procs import stop_child

T = TypeVar("T")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deployment.yaml"
# The example's parts that only the demo's real pods can use (steps and analysis tuned for them, Prometheus, a
# golden-set ConfigMap, a price): tests on simulated pods, which export no metrics, roll out with the defaults.
DEMO_ONLY = ("rollout", "analysis", "probe", "cost")
# A model the example's simulated pods can "serve" without its PersistentVolumeClaim: `model={"uri": HF_MODEL}`.
HF_MODEL = "hf://localattn/tiny-llama"


def example_lad(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """examples/deployment.yaml as `name`, without its demo-only parts; a dict override merges into the
    example's section of that name (one level), anything else replaces it."""
    import yaml

    doc = yaml.safe_load(EXAMPLE.read_text())
    for demo_only in DEMO_ONLY:
        doc["spec"].pop(demo_only, None)
    doc["metadata"] = {"name": name}
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    return dict(doc)


def default_test_state_dir() -> Path:
    """`$LOCALATTN_TEST_DEV_DIR`, else `<cache>/dev-test`: kept apart from the developer's own dev cluster."""
    env = os.environ.get("LOCALATTN_TEST_DEV_DIR")
    return Path(env) if env else cache_dir() / "dev-test"


def ensure_cluster(
    state_dir: Path | str | None = None,
    nodes: int = 2,
    gpus_per_node: int = 4,
    *,
    use_existing: bool = True,
) -> ClusterInfo:
    """A running cluster for a test session: `$KUBECONFIG`'s if it answers, else the test dev cluster
    (reused when it already runs healthy, started otherwise). It is left running for the next session;
    `controlplane.down(info.state_dir)` stops it."""
    return up(
        state_dir if state_dir is not None else default_test_state_dir(),
        nodes,
        gpus_per_node,
        use_existing=use_existing,
    )


@contextlib.contextmanager
def process_cluster(
    state_dir: Path,
    *,
    nodes: int,
    gpus_per_node: int,
    models: Sequence[str],
    keep: bool = False,
) -> Iterator[ClusterInfo]:
    """A fresh cluster of its own whose node agent runs pods as local processes (real vLLM on `models`, linked
    into its model store), for one real-pod test module; purged afterwards, also after a failed start.
    `keep` leaves it running for a look and prints how to stop it."""
    try:
        yield up(state_dir, nodes=nodes, gpus_per_node=gpus_per_node, node_mode="process", use_existing=False,
                 models=tuple(models))
    finally:
        if keep:
            print(f"the cluster keeps running for a look; stop it with "
                  f"`localattn dev --state-dir {state_dir} down --purge`")
        else:
            down(state_dir, purge=True)


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def kubectl(
    *args: str,
    kubeconfig: Path | str,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl (the cluster's own 1.20 build when available) against `kubeconfig`; text output."""
    argv = [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def kubectl_json(*args: str, kubeconfig: Path | str) -> Any:
    """`kubectl ... -o json`, parsed."""
    return json.loads(kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)


def apply_manifests(kubeconfig: Path | str, namespace: str, *manifests: dict[str, Any]) -> None:
    """`kubectl apply` of these objects into `namespace`, as one List (one kubectl process)."""
    body = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    kubectl("apply", "-n", namespace, "-f", "-", kubeconfig=kubeconfig, input=json.dumps(body))


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.5,
    message: str = "condition",
) -> T:
    """Poll until `predicate()` returns something truthy and return it. Exceptions count as "not yet";
    on timeout, raise TimeoutError naming `message`, the last value and the last exception."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = predicate()
            error = None
            if last:
                return last
        except Exception as e:
            error = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {message}; last value {last!r}"
            ) from error
        time.sleep(interval)


@contextlib.contextmanager
def temp_namespace(kubeconfig: Path | str, prefix: str = "test-", keep: bool = False) -> Iterator[str]:
    """Create a uniquely named namespace (with its `default` ServiceAccount) and delete it afterwards
    (without waiting: the namespace controller and the node agent finish the job in the background)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name, kubeconfig=kubeconfig)
    created = kubectl("create", "serviceaccount", "default", "-n", name, kubeconfig=kubeconfig, check=False)
    if created.returncode != 0 and "AlreadyExists" not in created.stderr:
        raise KubectlError(created.returncode, created.args, created.stdout, created.stderr)
    try:
        yield name
    finally:
        if not keep:
            kubectl("delete", "namespace", name, "--wait=false", kubeconfig=kubeconfig, check=False)


def model_volume(namespace: str) -> list[dict[str, Any]]:
    """The dev cluster's model store (the node's hostPath `/var/lib/localattn/models`, where `dev up` puts the
    tiny models) as a PV pre-bound to a claim `models` in `namespace`: what `pvc://models/<name>` mounts."""
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"models-{namespace}"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "hostPath": {"path": "/var/lib/localattn/models"},
                  "claimRef": {"namespace": namespace, "name": "models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"models-{namespace}",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip


def install_lad_crd(kubeconfig: Path | str) -> None:
    """The generated CRD, applied and established (what the operator needs before it starts)."""
    crd = Path(__file__).resolve().parents[2] / "crds" / "localattndeployment.yaml"
    kubectl("apply", "-f", str(crd), kubeconfig=kubeconfig)
    kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/localattndeployments.localattn.dev",
            kubeconfig=kubeconfig)


def install_inference_pool_crd(kubeconfig: Path | str) -> None:
    """The dev cluster's InferencePool CRD (`crds/inferencepool.yaml`, the Inference Extension v1 subset), applied
    and established. `dev up` does not install it: only the tests that use pools do."""
    crd = Path(__file__).resolve().parent / "crds" / "inferencepool.yaml"
    kubectl("apply", "-f", str(crd), kubeconfig=kubeconfig)
    kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/inferencepools.inference.networking.k8s.io",
            kubeconfig=kubeconfig)


@contextlib.contextmanager
def running_operator(kubeconfig: Path | str, log_path: Path,
                     env: dict[str, str | None] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a process (`localattn operator run`, resync 20 s) for the block, its output in `log_path`;
    `env` adds settings (a None value removes one inherited from the caller, e.g. LOCALATTN_PROMETHEUS_URL).
    SIGTERM at the end, SIGKILL after 30 s."""
    import sys

    merged = {**os.environ, "KUBECONFIG": str(kubeconfig), "LOCALATTN_RESYNC_SECONDS": "20"}
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "localattn_cli.main", "operator", "run", "--metrics-port", "0"],
                                env=merged, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop_child(proc)
