"""Least privilege: the rendered RBAC grants exactly what the operator and kopf use, nowhere more."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]

NAMESPACE = "localattn-system"
SUBJECT = {"kind": "ServiceAccount", "name": "la-localattn", "namespace": NAMESPACE}

# What the operator's code and kopf use, derived below (api_verbs_of_the_code, kopf_verbs), never written by hand:
# the chart must grant exactly their union, so an added call without a grant, or a grant nothing uses, fails.
# (apiGroup, resource) -> verbs, in every namespace the operator manages; cluster-scoped ones for kopf's observers.
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Effective (group, resource) -> verbs of a rule list."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def rbac(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io/")]


def roles_by_binding(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None], dict[tuple[str, str], set[str]]]:
    """(binding kind, namespace) -> what that binding grants our ServiceAccount; checks every roleRef resolves."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in rbac(docs)
             if d["kind"] in ("ClusterRole", "Role")}
    granted: dict[tuple[str, str | None], dict[tuple[str, str], set[str]]] = {}
    for binding in (d for d in rbac(docs) if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [SUBJECT]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], namespace, ref["name"])]
        key = (binding["kind"], binding["metadata"].get("namespace"))
        for resource, verbs in grants(role["rules"]).items():
            granted.setdefault(key, {}).setdefault(resource, set()).update(verbs)
    return granted


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"]}], ids=["cluster", "namespaced"])
def test_no_wildcards_no_secrets_no_escalation(render: Any, values: dict[str, Any]) -> None:
    for doc in rbac(render(values)):
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{doc['kind']} {doc['metadata']['name']}: wildcard in {field}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            assert not {"secrets", "serviceaccounts", "roles", "rolebindings", "clusterroles",
                        "clusterrolebindings", "nodes"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_cluster_wide_grants_exactly_what_is_used(render: Any) -> None:
    granted = roles_by_binding(render())
    assert granted == {("ClusterRoleBinding", None): {**NAMESPACED, **CLUSTER}, ("RoleBinding", NAMESPACE): LEADER}


def test_watch_namespaces_switches_to_roles(render: Any) -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    bound = {d["roleRef"]["name"] for d in rbac(docs) if d["kind"] == "ClusterRoleBinding"}
    # The operator's own ClusterRoles (the bound ones; the aggregated edit/view roles are for people).
    assert not [d for d in rbac(docs) if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound
                and grants(d["rules"]).keys() & NAMESPACED.keys()]
    assert roles_by_binding(docs) == {
        ("ClusterRoleBinding", None): CLUSTER,
        ("RoleBinding", "team-a"): NAMESPACED,
        ("RoleBinding", "team-b"): NAMESPACED,
        ("RoleBinding", NAMESPACE): LEADER,
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("run") + 1:] == [
        "--liveness", "http://0.0.0.0:8081/healthz", "--namespace", "team-a", "--namespace", "team-b",
    ]


# --- what the code uses -------------------------------------------------------------------------------------------

_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/[^/]+)?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")


class RecordingCluster:
    """The real `Cluster` over an in-memory apiserver stand-in that records (apiGroup, resource) -> verb for
    every request, as the apiserver's authorizer would see it (server-side apply of a missing object is
    authorised as patch *and* create)."""

    def __init__(self) -> None:
        from localattn_operator.k8s import Cluster

        self.store: dict[str, dict[str, Any]] = {}
        self.used: dict[tuple[str, str], set[str]] = {}
        self.reject_next_apply = False
        cluster = Cluster(ApiClient())
        cluster._call = self._call  # type: ignore[method-assign]  # every verb of Cluster goes through _call
        self.cluster = cluster

    def _record(self, path: str, verb: str) -> tuple[str, str | None]:
        match = _PATH.match(path)
        assert match, f"unrecognised API path {path}"
        group = "" if match["core"] else match["group"]
        resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
        if verb == "get" and match["name"] is None:
            verb = "list"
        self.used.setdefault((group, resource), set()).add(verb)
        return resource, match["name"]

    def _call(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Any:
        query_args = dict(query or [])
        verb = {"GET": "get", "PATCH": "patch", "POST": "create", "DELETE": "delete", "PUT": "update"}[method]
        _resource, name = self._record(path, verb)
        key = path.removesuffix("/status")
        if method == "GET":
            if name is None:
                return {"items": [o for k, o in self.store.items() if k.startswith(path + "/")]}
            if key not in self.store:
                raise ApiException(status=404, reason="Not Found")
            return copy.deepcopy(self.store[key])
        if method == "PATCH" and content_type == "application/apply-patch+yaml":
            if key not in self.store:
                self._record(path, "create")
            if self.reject_next_apply:
                self.reject_next_apply = False
                raise ApiException(status=422, reason="Unprocessable Entity")
            obj = {**copy.deepcopy(body), "metadata": {**body["metadata"], "uid": "u", "resourceVersion": "1"}}
            if query_args.get("dryRun") != "All":
                self.store[key] = obj
            return copy.deepcopy(obj)
        if method == "PATCH":
            self.store[key] = {**self.store.get(key, {}), **body}
            return copy.deepcopy(self.store[key])
        if method == "POST":  # events, the leader-election Lease: created once (a second create conflicts)
            created = f"{path}/{body['metadata']['name']}"
            if created in self.store:
                raise ApiException(status=409, reason="AlreadyExists")
            self.store[created] = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": "1"}}
            return copy.deepcopy(self.store[created])
        if method == "PUT":  # a replace, with the apiserver's optimistic concurrency on resourceVersion
            live = self.store.get(key)
            if live is None:
                raise ApiException(status=404, reason="Not Found")
            if body["metadata"].get("resourceVersion") != live["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            version = str(int(live["metadata"]["resourceVersion"]) + 1)
            self.store[key] = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": version}}
            return copy.deepcopy(self.store[key])
        if method == "DELETE":
            self.store.pop(key, None)
            return {}
        raise AssertionError(method)


def _ready_pods(recording: RecordingCluster, track: str, revision: str, count: int) -> None:
    for i in range(count):
        recording.store[f"/api/v1/namespaces/ns/pods/{track}-{revision}-{i}"] = {
            "metadata": {"name": f"{track}-{revision}-{i}", "namespace": "ns", "labels": {
                "localattn.dev/deployment": "tiny-llama", "localattn.dev/track": track, "localattn.dev/revision": revision}},
            "spec": {}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }


def api_verbs_of_the_code() -> dict[tuple[str, str], set[str]]:
    """Drive the real reconciler through its paths: a LAD of the single-Deployment era migrated to arms (its old
    Deployment and ConfigMap deleted once the stable arm serves), a quiet pass, a hand-edited arm, a child the
    apiserver refuses, a rollout superseded mid-way (a revision record pruned to the history limit), the
    promotion (the canary arm and superseded ConfigMaps pruned), and an invalid spec."""
    from localattn_operator.reconciler import Reconciler
    from localattn_operator.revision import revision_of
    from localattn_operator.validation import validate_spec

    recording = RecordingCluster()
    example = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
    example["spec"]["rollout"] = {"steps": [], "revisionHistoryLimit": 1}
    lad_path = "/apis/localattn.dev/v1alpha1/namespaces/ns/localattndeployments/tiny-llama"
    lad_meta = {"name": "tiny-llama", "namespace": "ns", "uid": "lad-uid", "generation": 1, "resourceVersion": "1"}
    recording.store[lad_path] = {**example, "metadata": lad_meta}
    owned = {"labels": {"localattn.dev/deployment": "tiny-llama", "app.kubernetes.io/managed-by": "localattn-operator"},
             "ownerReferences": [{"uid": "lad-uid", "kind": "LocalAttnDeployment", "name": "tiny-llama"}],
             "namespace": "ns"}
    recording.store["/apis/apps/v1/namespaces/ns/deployments/tiny-llama"] = {  # the pre-arms shape
        "metadata": {"name": "tiny-llama", "uid": "old", **owned}, "spec": {"replicas": 2}}
    recording.store["/api/v1/namespaces/ns/configmaps/tiny-llama-runtime"] = {
        "metadata": {"name": "tiny-llama-runtime", "uid": "old-cm", **owned}, "data": {}}
    reconciler = Reconciler(recording.cluster)  # type: ignore[arg-type]

    def spec_revision() -> str:
        return revision_of(validate_spec(recording.store[lad_path]["spec"]))

    first = spec_revision()
    reconciler.reconcile_now("ns", "tiny-llama")
    _ready_pods(recording, "stable", first, 2)
    reconciler.reconcile_now("ns", "tiny-llama")  # the stable arm serves: the old Deployment and ConfigMap go
    assert "/apis/apps/v1/namespaces/ns/deployments/tiny-llama" not in recording.store
    reconciler.reconcile_now("ns", "tiny-llama")
    recording.store["/apis/apps/v1/namespaces/ns/deployments/tiny-llama-stable"]["spec"]["replicas"] = 9  # by hand
    reconciler.reconcile_now("ns", "tiny-llama")
    recording.store.pop("/api/v1/namespaces/ns/services/tiny-llama")
    recording.reject_next_apply = True
    reconciler.reconcile_now("ns", "tiny-llama")
    for window in (256, 1024):  # a canary, superseded by another: three records, one allowed beyond protected
        recording.store[lad_path]["spec"]["localAttention"]["windowSize"] = window
        reconciler.reconcile_now("ns", "tiny-llama")
    _ready_pods(recording, "canary", spec_revision(), 2)
    for track, revision in (("stable", first), ("canary", spec_revision())):  # promotion: shift, then handover
        for _ in range(2):  # a growing arm gets the shrinking arm's GPUs one pass after they were planned away
            reconciler.reconcile_now("ns", "tiny-llama")
        for key in [k for k in recording.store if f"/pods/{track}-{revision}" in k]:
            recording.store.pop(key)
    _ready_pods(recording, "stable", spec_revision(), 2)
    for _ in range(3):
        reconciler.reconcile_now("ns", "tiny-llama")
    assert "/apis/apps/v1/namespaces/ns/deployments/tiny-llama-canary" not in recording.store
    # the gatewayAPI router: the named HTTPRoute's weights read and patched
    route_path = "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes/llm"
    recording.store[route_path] = {"metadata": {"name": "llm", "resourceVersion": "1"}, "spec": {"rules": [
        {"backendRefs": [{"name": "tiny-llama-stable", "port": 8000, "weight": 1},
                         {"name": "tiny-llama-canary", "port": 8000, "weight": 1}]}]}}
    recording.store[lad_path]["spec"]["rollout"]["router"] = {"gatewayAPI": {"httpRoute": "llm"}}
    reconciler.reconcile_now("ns", "tiny-llama")
    weights = [ref["weight"] for ref in recording.store[route_path]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0], weights
    # backendKind InferencePool: one pool per arm, applied before the weights
    recording.store[lad_path]["spec"]["rollout"]["router"] = {"gatewayAPI": {
        "httpRoute": "llm", "backendKind": "InferencePool", "endpointPicker": {"name": "epp"}}}
    for ref in recording.store[route_path]["spec"]["rules"][0]["backendRefs"]:
        ref.update(group="inference.networking.k8s.io", kind="InferencePool")
    reconciler.reconcile_now("ns", "tiny-llama")
    assert "/apis/inference.networking.k8s.io/v1/namespaces/ns/inferencepools/tiny-llama-canary" in recording.store
    # spec.autoscaling: a count below minReplicas moves to it, written through the LAD's scale subresource
    recording.store[lad_path]["spec"]["autoscaling"] = {"minReplicas": 3, "maxReplicas": 4,
                                                        "targets": {"waitingRequestsPerReplica": 2}}
    reconciler.reconcile_now("ns", "tiny-llama")
    assert recording.store[lad_path + "/scale"] == {"spec": {"replicas": 3}}
    # spec.networkPolicy: rendered (applied), then turned off (listed and pruned)
    policy_path = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/tiny-llama-serving"
    recording.store[lad_path]["spec"]["networkPolicy"] = {"enabled": True}
    reconciler.reconcile_now("ns", "tiny-llama")
    assert policy_path in recording.store
    recording.store[lad_path]["spec"]["networkPolicy"] = {"enabled": False}
    reconciler.reconcile_now("ns", "tiny-llama")
    assert policy_path not in recording.store
    recording.store[lad_path]["spec"]["localAttention"]["windowSize"] = 10**6
    reconciler.reconcile_now("ns", "tiny-llama")
    return recording.used


def api_verbs_of_the_leader() -> dict[tuple[str, str], set[str]]:
    """Leader election (leader.py) through its paths, in the release namespace: one replica creates the Lease and
    renews it, a second waits, takes it over once it stops renewing, and hands it back on a clean shutdown."""
    from localattn_operator.leader import Elector, Timing

    recording = RecordingCluster()
    now = [0.0]
    timing = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
    a, b = (Elector(recording.cluster, namespace=NAMESPACE, name="la-localattn", identity=who, timing=timing,
                    clock=lambda: now[0], on_lost=lambda: None) for who in ("a", "b"))
    a.step()
    b.step()
    now[0] += timing.retry_period
    a.step()
    b.step()
    now[0] += timing.lease_duration  # a died after its renewal
    b.step()
    assert b.leading.is_set()
    b.release()
    assert not recording.store[f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/la-localattn"][
        "spec"].get("holderIdentity")
    return recording.used


def kopf_verbs() -> dict[tuple[str, str], set[str]]:
    """What kopf does for the registered handlers: list+watch every handled resource (and, for its observers,
    CRDs and namespaces), patch the ones whose changes it handles (progress and diff-base annotations), and
    post its own events (settings.posting)."""
    import kopf

    import localattn_operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    used: dict[tuple[str, str], set[str]] = {(g, r): {"list", "watch"} for g, r in CLUSTER_SCOPED}
    for kind, handlers in (("watching", registry._watching), ("spawning", registry._spawning),
                           ("changing", registry._changing)):
        for handler in handlers.get_all_handlers():
            selector = handler.selector
            assert selector is not None and selector.group is not None and selector.any_name
            verbs = used.setdefault((selector.group, str(selector.any_name)), set())
            verbs.update({"list", "watch"} | ({"patch"} if kind != "watching" else set()))
    used.setdefault(("", "events"), set()).add("create")
    return used


def derived() -> tuple[dict[tuple[str, str], set[str]], dict[tuple[str, str], set[str]]]:
    """(namespaced, cluster-scoped) grants the operator needs."""
    union: dict[tuple[str, str], set[str]] = {}
    for source in (api_verbs_of_the_code(), kopf_verbs()):
        for resource, verbs in source.items():
            union.setdefault(resource, set()).update(verbs)
    namespaced = {k: v for k, v in union.items() if k not in CLUSTER_SCOPED}
    return namespaced, {k: v for k, v in union.items() if k in CLUSTER_SCOPED}


NAMESPACED, CLUSTER = derived()
# Granted by a Role in the release namespace only (the Lease lives there), whatever namespaces are watched.
LEADER = api_verbs_of_the_leader()


def test_the_derivation_sees_what_the_code_does() -> None:
    """The derivation itself, against facts read from the code by a person (a sanity floor, not the list)."""
    assert NAMESPACED[("apps", "deployments")] >= {"get", "patch", "create", "list", "watch"}
    assert NAMESPACED[("localattn.dev", "localattndeployments/status")] == {"patch"}
    assert NAMESPACED[("localattn.dev", "localattndeployments/scale")] == {"patch"}  # spec.autoscaling's write
    assert NAMESPACED[("", "pods")] == {"list", "watch"}
    assert "update" not in set().union(*NAMESPACED.values())
    # delete: pruned arms, a migrated LAD's old Deployment, superseded runtime ConfigMaps, records beyond the limit,
    # a NetworkPolicy turned off
    assert {"deployments", "configmaps", "controllerrevisions", "networkpolicies"} == {
        r for (_g, r), verbs in NAMESPACED.items() if "delete" in verbs}


def test_every_api_path_of_the_client_is_exercised() -> None:
    """Each collection the client knows is reached by the derivation (else its verbs would go unnoticed)."""
    from localattn_operator import k8s

    resources = {path.rsplit("/", 1)[-1] for path in k8s._PATHS.values()}
    assert resources <= {resource for _group, resource in {**api_verbs_of_the_code(), **LEADER}}
    assert {("coordination.k8s.io", "leases"): {"get", "create", "update"}} == LEADER
    assert k8s.API_VERBS["leases"] == LEADER[("coordination.k8s.io", "leases")]
