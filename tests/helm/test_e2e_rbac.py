"""The chart's RBAC on a real apiserver: the operator's ServiceAccount can do its job and nothing else.

The rendered ServiceAccount, (Cluster)Roles and bindings are applied with kubectl to the local control plane
(RBAC authorization mode); `kubectl auth can-i --as system:serviceaccount:...` then asks the apiserver's own
authorizer. The Deployment and Service go through a server-side dry run, so the apiserver validates them too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_dev import procs, testing

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _can_i_names(grants: dict[tuple[str, str], set[str]]) -> dict[str, set[str]]:
    """(apiGroup, resource[/sub]) -> verbs, as `kubectl auth can-i --list` names them (resource.group[/sub])."""
    named = {}
    for (group, resource), verbs in grants.items():
        base, _, sub = resource.partition("/")
        named[f"{base}.{group}" + (f"/{sub}" if sub else "") if group else resource] = set(verbs)
    return named


def _derived() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """The verbs test_rbac.py derives from the code (one derivation, used by both suites)."""
    spec = importlib.util.spec_from_file_location("_derived_rbac", Path(__file__).with_name("test_rbac.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _can_i_names(module.NAMESPACED), _can_i_names(module.CLUSTER), _can_i_names(module.LEADER)


# What `kubectl auth can-i --list` must show beyond what any ServiceAccount gets (resource.group -> verbs);
# LEADER only in the release namespace (the leader-election Lease).
NAMESPACED, CLUSTER, LEADER = _derived()

# (verb, resource, extra kubectl args): what the operator does in a namespace it manages.
ALLOWED = [
    ("watch", "localattndeployments.localattn.dev", ()),
    ("patch", "localattndeployments.localattn.dev", ()),
    ("patch", "localattndeployments.localattn.dev", ("--subresource=status",)),
    ("create", "deployments.apps", ()),
    ("patch", "deployments.apps", ()),
    ("patch", "services", ()),
    ("create", "configmaps", ()),
    ("delete", "deployments.apps", ()),  # pruned arms, a migrated LAD's single Deployment
    ("delete", "configmaps", ()),  # superseded per-revision runtime ConfigMaps
    ("create", "controllerrevisions.apps", ()),  # the revision records
    ("delete", "controllerrevisions.apps", ()),  # pruned to the history limit
    ("list", "pods", ()),
    ("create", "events", ()),
    ("patch", "networkpolicies.networking.k8s.io", ()),  # spec.networkPolicy
    ("delete", "networkpolicies.networking.k8s.io", ()),  # turned off
]
# Things it must never do, anywhere.
DENIED = [
    ("get", "secrets", ()),
    ("list", "secrets", ()),
    ("create", "pods", ()),
    ("delete", "pods", ()),
    ("create", "localattndeployments.localattn.dev", ()),
    ("delete", "localattndeployments.localattn.dev", ()),
    ("update", "deployments.apps", ("--subresource=scale",)),
    ("update", "deployments.apps", ()),  # server-side apply is a PATCH
    ("delete", "services", ()),  # one Service for every revision: never deleted, the GC does it with the LAD
    ("update", "controllerrevisions.apps", ()),
    ("update", "localattndeployments.localattn.dev", ()),
    ("create", "serviceaccounts", ()),
    ("create", "rolebindings.rbac.authorization.k8s.io", ()),
    ("deletecollection", "configmaps", ()),
    # escalation: no RBAC objects, no escalate/bind, no tokens, no exec into or attach to pods, no pod proxy
    ("create", "roles.rbac.authorization.k8s.io", ()),
    ("patch", "roles.rbac.authorization.k8s.io", ()),
    ("escalate", "roles.rbac.authorization.k8s.io", ()),
    ("bind", "roles.rbac.authorization.k8s.io", ()),
    ("patch", "rolebindings.rbac.authorization.k8s.io", ()),
    ("create", "serviceaccounts", ("--subresource=token",)),
    ("create", "pods", ("--subresource=exec",)),
    ("create", "pods", ("--subresource=attach",)),
    ("get", "pods", ("--subresource=proxy",)),
    ("create", "pods", ("--subresource=eviction",)),
    ("watch", "secrets", ()),
    ("create", "secrets", ()),
    ("create", "networkpolicies.networking.k8s.io", ("--subresource=status",)),
    ("update", "leases.coordination.k8s.io", ()),  # only in the release namespace (leader election)
]
CLUSTER_ALLOWED = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("watch", "namespaces", ()),
]
CLUSTER_DENIED = [
    ("delete", "namespaces", ()),
    ("create", "namespaces", ()),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ("list", "secrets", ("--all-namespaces",)),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
    ("impersonate", "serviceaccounts", ()),
    ("impersonate", "users", ()),
    ("impersonate", "groups", ()),
    ("create", "clusterroles.rbac.authorization.k8s.io", ()),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ()),
    ("bind", "clusterroles.rbac.authorization.k8s.io", ()),
    ("create", "certificatesigningrequests.certificates.k8s.io", ()),
    ("create", "tokenreviews.authentication.k8s.io", ()),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ()),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", ()),
    ("get", "nodes", ()),
    ("get", "nodes", ("--subresource=proxy",)),
]


@pytest.fixture(scope="module")
def kubeconfig(cluster: Any) -> str:
    """The session's control plane (tests/conftest.py)."""
    return str(cluster.kubeconfig)


def kubectl(kubeconfig: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return testing.kubectl(*args, kubeconfig=kubeconfig, **kwargs)


def can_i(kubeconfig: str, user: str, verb: str, resource: str, extra: tuple[str, ...], namespace: str) -> bool:
    proc = kubectl(kubeconfig, "auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", user, check=False)
    answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {proc.stdout!r} {proc.stderr!r}"
    return answer == "yes"


def granted(kubeconfig: str, user: str, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` (a SelfSubjectRulesReview) as `user` in `namespace`: resource -> verbs."""
    out = kubectl(kubeconfig, "auth", "can-i", "--list", "-n", namespace, "--as", user).stdout
    rules: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        columns = re.split(r"\s{2,}|\s+(?=\[)", line.strip())
        resource, verbs = columns[0], columns[-1]
        if not resource or resource.startswith("["):  # non-resource URLs
            continue
        rules.setdefault(resource, set()).update(verbs.strip("[]").split())
    return rules


@pytest.fixture(scope="module")
def crd_installed(kubeconfig: str, chart: Any) -> None:
    """What `helm install` does first: the chart's CRD (shared with other suites; left in place)."""
    for crd in chart.crds:
        kubectl(kubeconfig, "apply", "-f", "-", input=crd["data"])


@dataclass
class Installed:
    docs: list[dict[str, Any]]  # everything the chart rendered
    namespace: str  # the release namespace
    service_account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def container(self) -> dict[str, Any]:
        deployment = next(d for d in self.docs if d["kind"] == "Deployment")
        result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
        return result


@pytest.fixture
def install(kubeconfig: str, render: Any, crd_installed: None) -> Iterator[Callable[..., Installed]]:
    """`install(values, namespace)`: apply the chart's ServiceAccount and RBAC under a unique release name and
    dry-run the rest on the server. Cluster-scoped objects are deleted afterwards (namespaces by the tests)."""
    releases: list[str] = []

    def _install(values: dict[str, Any], namespace: str) -> Installed:
        release = f"rbac-{uuid.uuid4().hex[:6]}"
        releases.append(release)
        docs = render(values, name=release, namespace=namespace)
        rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
        rest = [d for d in docs if d["kind"] not in RBAC_KINDS]
        kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(rest))
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        return Installed(docs, namespace, sa)

    yield _install
    for release in releases:
        kubectl(kubeconfig, "delete", "clusterrole,clusterrolebinding", "-l",
                f"app.kubernetes.io/instance={release}", "--wait=false", check=False)


def extra_grants(kubeconfig: str, user: str, namespace: str) -> dict[str, set[str]]:
    """What `user` may do in `namespace` beyond an unbound ServiceAccount (discovery, self-reviews)."""
    baseline = granted(kubeconfig, f"system:serviceaccount:{namespace}:default", namespace)
    return {
        resource: verbs - baseline.get(resource, set())
        for resource, verbs in granted(kubeconfig, user, namespace).items()
        if verbs - baseline.get(resource, set())
    }


def test_cluster_wide_install_grants_exactly_what_the_operator_uses(kubeconfig: str, install: Any) -> None:
    with testing.temp_namespace(kubeconfig, prefix="helm-op-") as release_ns, \
            testing.temp_namespace(kubeconfig, prefix="helm-app-") as app_ns:
        user = install({}, release_ns).user
        assert extra_grants(kubeconfig, user, app_ns) == {**NAMESPACED, **CLUSTER}
        for verb, resource, extra in ALLOWED + CLUSTER_ALLOWED:
            assert can_i(kubeconfig, user, verb, resource, extra, app_ns), f"cannot {verb} {resource} {extra}"
        for verb, resource, extra in DENIED + CLUSTER_DENIED:
            assert not can_i(kubeconfig, user, verb, resource, extra, app_ns), f"can {verb} {resource} {extra}"


def test_watch_namespaces_confines_the_operator(kubeconfig: str, install: Any) -> None:
    with testing.temp_namespace(kubeconfig, prefix="helm-op-") as release_ns, \
            testing.temp_namespace(kubeconfig, prefix="helm-a-") as watched, \
            testing.temp_namespace(kubeconfig, prefix="helm-b-") as other:
        user = install({"watchNamespaces": [watched]}, release_ns).user
        assert extra_grants(kubeconfig, user, watched) == {**NAMESPACED, **CLUSTER}
        assert extra_grants(kubeconfig, user, other) == CLUSTER
        assert extra_grants(kubeconfig, user, release_ns) == {**CLUSTER, **LEADER}
        for verb, resource, extra in ALLOWED:
            assert can_i(kubeconfig, user, verb, resource, extra, watched), f"cannot {verb} {resource} in {watched}"
            assert not can_i(kubeconfig, user, verb, resource, extra, other), f"can {verb} {resource} in {other}"
        for verb, resource, extra in DENIED + CLUSTER_DENIED:
            assert not can_i(kubeconfig, user, verb, resource, extra, watched), f"can {verb} {resource} {extra}"
        for verb, resource, extra in CLUSTER_ALLOWED:
            assert can_i(kubeconfig, user, verb, resource, extra, other), f"cannot {verb} {resource}"


def service_account_kubeconfig(kubeconfig: str, namespace: str, name: str, path: Path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token, as a pod would mount)."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    out = kubectl(kubeconfig, "create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                  "-f", "-", input=json.dumps(request)).stdout
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": name, "user": {"token": json.loads(out)["status"]["token"]}}],
        "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_operator_runs_as_the_chart_configures_it(kubeconfig: str, install: Any, tmp_path: Path) -> None:
    """The rendered command, env and RBAC are enough for the real operator: run exactly the container's
    command line as the chart's ServiceAccount, confined to one watched namespace, and let it serve a
    LocalAttnDeployment to Ready; its health and metrics endpoints answer on the rendered ports."""
    with testing.temp_namespace(kubeconfig, prefix="helm-op-") as release_ns, \
            testing.temp_namespace(kubeconfig, prefix="helm-a-") as watched:
        metrics_port, health_port = free_port(), free_port()
        installed = install({"watchNamespaces": [watched], "resyncSeconds": 5,
                             "metrics": {"port": metrics_port}, "health": {"port": health_port}}, release_ns)
        sa_kubeconfig = service_account_kubeconfig(
            kubeconfig, release_ns, installed.service_account, tmp_path / "sa.kubeconfig"
        )
        container = installed.container()
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
        # As if in a pod (a dead in-cluster address): `--kubeconfig` must win, for our client and kopf's login.
        env.update({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"})
        command = [str(Path(sys.executable).parent / container["command"][0]), *container["args"],
                   "--kubeconfig", sa_kubeconfig]
        log = tmp_path / "operator.log"
        with open(log, "w") as out:
            operator = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            health = f"http://127.0.0.1:{health_port}/healthz"
            testing.wait_for(lambda: urllib.request.urlopen(health, timeout=2).status == 200, timeout=30,
                             message="the operator's liveness endpoint")
            name = "tiny-llama"
            lad = testing.example_lad(name, replicas=1, model={"uri": testing.HF_MODEL})  # no PVC to provision
            kubectl(kubeconfig, "apply", "-n", watched, "-f", "-", input=yaml.safe_dump(lad))

            def status() -> dict[str, Any]:
                out = kubectl(kubeconfig, "get", "lad", name, "-n", watched, "-o", "yaml").stdout
                result: dict[str, Any] = yaml.safe_load(out).get("status") or {}
                return result

            try:
                testing.wait_for(lambda: status().get("phase") == "Ready", timeout=60, message=f"{name} Ready")
            except TimeoutError:
                pytest.fail(f"not Ready: {status()}\noperator log:\n{log.read_text()[-3000:]}")
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert "localattn_operator_reconciles_total" in body
        finally:
            procs.stop_child(operator)
        text = log.read_text()
        assert "Forbidden" not in text and " 403" not in text, text[-4000:]
        # It led through the chart's Lease Role (in the release namespace) and handed the Lease back on SIGTERM.
        assert "leader election: leading" in text and "released lease" in text, text[-4000:]


def test_the_service_account_cannot_escalate_or_reach_past_its_namespaces(kubeconfig: str, install: Any,
                                                                         tmp_path: Path) -> None:
    """Real requests, authenticated as the chart's ServiceAccount (a TokenRequest token, as in a pod), not only
    authorizer questions: each attempt to read a Secret, to write outside the watched namespace, or to grant itself
    more is refused by the apiserver with 403, and leaves nothing behind."""
    with testing.temp_namespace(kubeconfig, prefix="helm-op-") as release_ns, \
            testing.temp_namespace(kubeconfig, prefix="helm-a-") as watched, \
            testing.temp_namespace(kubeconfig, prefix="helm-b-") as other:
        installed = install({"watchNamespaces": [watched]}, release_ns)
        kubectl(kubeconfig, "create", "secret", "generic", "planted", "-n", watched, "--from-literal=token=s3cr3t")
        sa = service_account_kubeconfig(kubeconfig, release_ns, installed.service_account, tmp_path / "sa.kubeconfig")
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe-cm"}, "data": {"a": "b"}}
        escalations: list[tuple[str, dict[str, Any] | None, list[str]]] = [
            ("read a Secret in the watched namespace", None, ["get", "secret", "planted", "-n", watched, "-o", "json"]),
            ("list Secrets cluster-wide", None, ["get", "secrets", "--all-namespaces"]),
            ("write a ConfigMap in an unwatched namespace", config_map, ["apply", "-n", other, "-f", "-"]),
            ("write a ConfigMap in its own namespace", config_map, ["apply", "-n", release_ns, "-f", "-"]),
            ("create a Role granting Secrets", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "grab"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
             ["apply", "-n", watched, "-f", "-"]),
            ("bind itself to cluster-admin", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "grab"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": installed.service_account, "namespace": release_ns}]},
             ["apply", "-n", watched, "-f", "-"]),
            ("bind itself to cluster-admin cluster-wide", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "grab-h5"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": installed.service_account, "namespace": release_ns}]},
             ["apply", "-f", "-"]),
            ("impersonate an admin", None, ["get", "secrets", "-n", watched, "--as", "system:admin",
                                            "--as-group", "system:masters"]),
            ("mint a token for another ServiceAccount", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
             ["create", "--raw", f"/api/v1/namespaces/{watched}/serviceaccounts/default/token", "-f", "-"]),
            ("run a pod directly", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "grab"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, ["apply", "-n", watched, "-f", "-"]),
        ]
        for what, body, args in escalations:
            result = testing.kubectl(*args, kubeconfig=sa, check=False, input=json.dumps(body) if body else None)
            assert result.returncode != 0, f"could {what}: {result.stdout}"
            assert "forbidden" in result.stderr.lower(), f"{what}: {result.stderr}"
            assert "s3cr3t" not in result.stdout + result.stderr
        for kind in ("rolebinding", "role", "pod"):
            assert kubectl(kubeconfig, "get", kind, "grab", "-n", watched, check=False).returncode != 0, kind
        assert kubectl(kubeconfig, "get", "configmap", "probe-cm", "-n", other, check=False).returncode != 0
        assert kubectl(kubeconfig, "get", "clusterrolebinding", "grab-h5", check=False).returncode != 0
        # ... while the same identity can do its job in the watched namespace.
        assert testing.kubectl("apply", "-n", watched, "-f", "-", kubeconfig=sa, input=json.dumps(config_map),
                               check=False).returncode == 0
