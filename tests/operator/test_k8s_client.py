"""The API client's safety: every call times out, and an explicit kubeconfig wins over in-cluster config."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kopf._cogs.structs.references import Resource
from kubernetes.client import ApiClient

from localattn_operator import handlers
from localattn_operator.k8s import Cluster, load_api_client, load_configuration
from localattn_operator.settings import Settings
from localattn_operator.status import FailingPod


@pytest.fixture
def half_open_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a half-open or wedged apiserver)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def kubeconfig(path: Path, server: str, token: str = "t0ken") -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return str(path)


@pytest.mark.parametrize("call", ["get_lad", "patch_status", "pod_problems", "plan_apply"])
def test_a_call_to_a_silent_server_fails_within_its_timeout(half_open_server: str, tmp_path: Path, call: str) -> None:
    cluster = Cluster(load_api_client(kubeconfig(tmp_path / "kc", half_open_server)), connect_timeout=1, read_timeout=1)
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    calls = {
        "get_lad": lambda: cluster.get_lad("ns", "x"),
        "patch_status": lambda: cluster.patch_status("ns", "x", {"phase": "Ready"}),
        "pod_problems": lambda: cluster.pod_problems("ns", "a=b"),
        "plan_apply": lambda: cluster.plan_apply(manifest),
    }
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed? ?out"):
        calls[call]()
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"{call} took {elapsed:.1f}s against a 1 s read timeout: a retry or no timeout at all"


def test_explicit_kubeconfig_wins_over_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")  # as inside a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    path = kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", token="from-file")
    with pytest.raises(Exception, match=r"(?i)service|token|incluster"):
        load_configuration(None)  # without the argument the in-cluster config is tried (and has no token here)
    assert load_configuration(path).host == "http://127.0.0.1:1"
    # kopf logs in with the same credentials (its built-in login would try in-cluster first)
    monkeypatch.setattr(handlers, "SETTINGS", Settings(kubeconfig=path))
    info = handlers.login()
    assert info.server == "http://127.0.0.1:1" and info.token == "from-file" and info.scheme == "Bearer"


def test_the_cli_hands_the_kubeconfig_to_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALATTN_KUBECONFIG", "/some/kubeconfig")
    assert Settings.from_env().kubeconfig == "/some/kubeconfig"
    source = (Path(__file__).resolve().parents[2] / "cli" / "localattn_cli" / "operator_cmd.py").read_text()
    assert 'os.environ["LOCALATTN_KUBECONFIG"] = args.kubeconfig' in source


def test_kopf_watches_children_by_server_side_selector_and_with_timeouts() -> None:
    settings = kopf.OperatorSettings()
    ours = Settings(api_timeout_seconds=7, api_connect_timeout_seconds=3, watch_server_timeout_seconds=100,
                    watch_client_timeout_seconds=120)
    handlers.configure_settings(settings, ours)
    for group, version, plural in handlers.CHILD_RESOURCES:
        resource = Resource(group, version, plural, namespaced=True)
        assert settings.watching.label_selectors.collect(resource) == ["app.kubernetes.io/managed-by=localattn-operator"]
    lad = Resource("localattn.dev", "v1alpha1", "localattndeployments", namespaced=True)
    assert settings.watching.label_selectors.collect(lad) == []  # every LAD is ours
    assert settings.networking.request_timeout == 7 and settings.networking.connect_timeout == 3
    assert settings.watching.server_timeout == 100 and settings.watching.client_timeout == 120
    # the watch's timeoutSeconds: the apiserver refuses "300.0" (strconv.ParseInt)
    assert isinstance(settings.watching.server_timeout, int)
    assert isinstance(Settings.from_env().watch_server_timeout_seconds, int)
    assert settings.watching.connect_timeout == 3


def _answering(responses: dict[str, Any]) -> Cluster:
    """A Cluster whose GETs answer from `responses` (path -> JSON), as the apiserver would."""
    cluster = Cluster(ApiClient())

    def call(method: str, path: str, **_: Any) -> Any:
        assert method == "GET"
        return responses[path]

    cluster._call = call  # type: ignore[method-assign]
    return cluster


def test_failure_signals_are_read_from_pod_and_deployment_status() -> None:
    """Shapes as kubelet and the deployment controller write them (`kubectl get -o json` of the real thing)."""
    crashing = {
        "metadata": {"name": "lad-abc", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "vllm", "restartCount": 4, "ready": False,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "ValueError: bad model"}},
        }]},
    }
    starting = {
        "metadata": {"name": "lad-def", "creationTimestamp": "2026-01-01T00:01:00Z"},
        "spec": {"nodeName": "n2"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                   "containerStatuses": [{"name": "vllm", "state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    unschedulable = {
        "metadata": {"name": "lad-ghi"},
        "spec": {},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                       "reason": "Unschedulable", "message": "0/2 nodes"}]},
    }
    deleting = {**crashing, "metadata": {**crashing["metadata"], "name": "old", "deletionTimestamp": "x"}}
    stuck = {
        "metadata": {"name": "lad", "generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "replicas": 2, "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "lad-abc" has timed out progressing.'},
        ]},
    }
    cluster = _answering({
        "/api/v1/namespaces/ns/pods": {"items": [crashing, starting, unschedulable, deleting]},
        "/apis/apps/v1/namespaces/ns/deployments/lad": stuck,
    })
    problems = cluster.pod_problems("ns", "a=b")
    assert problems.failing == [FailingPod(name="lad-abc", container="vllm", reason="CrashLoopBackOff", restarts=4,
                                           exit_code=1, last_message="ValueError: bad model")]
    assert [(p.name, p.reason) for p in problems.pending] == [("lad-def", "ContainerCreating"), ("lad-ghi", "Unschedulable")]
    assert problems.pending[0].since == datetime(2026, 1, 1, 0, 1, tzinfo=UTC) and problems.pending[1].since is None
    state = cluster.deployment_state("ns", "lad")
    assert state is not None and state.progress_deadline_exceeded and "timed out" in state.progress_message


def test_drift_is_read_from_content_not_from_resource_versions() -> None:
    """The deployment controller writing status between our read and our apply bumps the resourceVersion, and
    must not read as a hand edit; a changed field we render must."""
    live = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "5", "generation": 1,
                         "labels": {"a": "1"}, "managedFields": [{"manager": "localattn-operator"}]},
            "spec": {"replicas": 2}, "status": {"readyReplicas": 1}}
    answers: list[dict[str, Any]] = []

    def call(method: str, path: str, *, query: list[tuple[str, str]] | None = None, **_: Any) -> Any:
        if method == "GET":
            return live
        assert method == "PATCH" and ("dryRun", "All") in (query or [])  # planning writes nothing
        return answers.pop(0)

    cluster = Cluster(ApiClient())
    cluster._call = call  # type: ignore[method-assign]
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"}}
    status_written = {**live, "metadata": {**live["metadata"], "resourceVersion": "6",
                                           "managedFields": [{"manager": "kube-controller-manager"}]},
                      "status": {"readyReplicas": 2}}
    answers.append(status_written)
    assert cluster.plan_apply(manifest) == "unchanged"
    edited_back = {**status_written, "spec": {"replicas": 3}, "metadata": {**status_written["metadata"], "generation": 2}}
    answers.append(edited_back)
    assert cluster.plan_apply(manifest) == "updated"


def test_a_missing_route_and_a_missing_route_api_are_told_apart() -> None:
    """404 naming the route: None (the router reports it); 404 without a name: the Gateway API is not installed."""
    import json

    from kubernetes.client.exceptions import ApiException

    from localattn_operator.traffic_router import RouterError

    def answer(body: dict[str, Any]) -> Cluster:
        cluster = Cluster(ApiClient())

        def call(method: str, path: str, **_: Any) -> Any:
            exc = ApiException(status=404, reason="Not Found")
            exc.body = json.dumps(body)
            raise exc

        cluster._call = call  # type: ignore[method-assign]
        return cluster

    missing = {"kind": "Status", "reason": "NotFound", "details": {"name": "llm", "kind": "httproutes"}}
    assert answer(missing).get_route("ns", "llm") is None
    with pytest.raises(RouterError, match="not installed"):
        answer({"kind": "Status", "reason": "NotFound", "message": "the server could not find the requested resource"}
               ).get_route("ns", "llm")
