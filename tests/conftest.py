"""Fixtures shared by every e2e suite: one real local control plane per session, kubectl, namespaces."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


class K8s:
    """kubectl against the session's cluster, plus the polling the e2e tests need."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        from localattn_dev.testing import kubectl

        return kubectl(*args, kubeconfig=self.kubeconfig, check=check, input=input)

    def apply(self, namespace: str, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check)

    def get(self, namespace: str, kind: str, name: str, missing_ok: bool = False) -> Any:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if missing_ok and "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind}/{name}: {result.stderr}")
        return json.loads(result.stdout)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def events(self, namespace: str, name: str, type_: str | None = None) -> list[dict[str, Any]]:
        out = self.kubectl("get", "events", "-n", namespace, "--field-selector",
                           f"involvedObject.name={name},involvedObject.kind=LocalAttnDeployment", "-o", "json").stdout
        return [e for e in json.loads(out)["items"] if type_ is None or e["type"] == type_]

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        return [e["reason"] for e in self.events(namespace, name)]

    def wait_for(self, predicate: Callable[[], T], message: str, timeout: float = 60.0) -> T:
        from localattn_dev.testing import wait_for

        return wait_for(predicate, timeout=timeout, interval=0.25, message=message)

    def wait_lad(self, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 60.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            lad = self.get(namespace, "lad", name)
            return lad if predicate(lad.get("status") or {}) else None

        try:
            return self.wait_for(check, f"lad/{name} status", timeout)
        except TimeoutError as exc:
            status = json.dumps((self.get(namespace, "lad", name) or {}).get("status"), indent=1)
            raise AssertionError(f"{exc}\nlast status: {status}") from None


@pytest.fixture(scope="session")
def cluster() -> Any:
    """The real local control plane (etcd, kube-apiserver, controller-manager, scheduler, fake GPU nodes)."""
    from localattn_dev.testing import ensure_cluster

    return ensure_cluster()


@pytest.fixture(scope="session")
def k8s(cluster: Any) -> K8s:
    return K8s(Path(cluster.kubeconfig))


@pytest.fixture
def namespace(k8s: K8s) -> Iterator[str]:
    from localattn_dev.testing import temp_namespace

    with temp_namespace(k8s.kubeconfig, prefix="e2e-") as name:
        yield name
