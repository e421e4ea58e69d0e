"""The only module that talks to the Kubernetes API (besides kopf's own watching).

Plain REST over the official client's ApiClient, on apps/v1, core/v1 and our CRD only: these are served
identically by Kubernetes 1.20 and current releases. Children are written with server-side apply (`force`),
which makes the operator the owner of every field it renders: a hand edit of one of them is undone on the
next reconcile, while fields it does not render (e.g. added by other controllers) are left alone.

Every call has a (connect, read) timeout: a half-open connection must fail the reconcile, not hang it while
it holds the object's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localattn_operator import models
from localattn_operator.duration import parse_time
from localattn_operator.status import ApplyResult, DeploymentState, Event, FailingPod, PendingPod
from localattn_operator.traffic_router import RouterError

FIELD_MANAGER = "localattn-operator"
log = logging.getLogger(__name__)

_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{namespace}/events",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
    ("apps/v1", "ControllerRevision"): "/apis/apps/v1/namespaces/{namespace}/controllerrevisions",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes",
    ("networking.k8s.io/v1", "NetworkPolicy"): "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
    ("coordination.k8s.io/v1", "Lease"): "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    ("inference.networking.k8s.io/v1", "InferencePool"): (
        "/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools"
    ),
    (f"{models.GROUP}/{models.VERSION}", models.KIND): (
        f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{{namespace}}/{models.PLURAL}"
    ),
}
_LAD_API_VERSION = f"{models.GROUP}/{models.VERSION}"
_ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
# The verbs (HTTP method -> Kubernetes verb) each method of Cluster uses, per resource: the chart's RBAC is
# derived from this table (tests/helm/test_rbac.py), so an added call without a grant fails a test first.
API_VERBS: dict[str, set[str]] = {
    "localattndeployments": {"get"},
    "localattndeployments/status": {"patch"},
    "deployments": {"get", "patch", "delete"},  # server-side apply creates through PATCH; delete: pruned arms
    "services": {"get", "patch"},
    "configmaps": {"get", "patch", "list", "delete"},  # list + delete: superseded runtime ConfigMaps pruned
    "controllerrevisions": {"list", "patch", "delete"},  # the revision records, pruned to the history limit
    "pods": {"list"},
    "events": {"create"},
    "httproutes": {"get", "patch"},  # the gatewayAPI router: only the two backendRefs' weights of a named route
    "inferencepools": {"get", "patch"},  # gatewayAPI router, backendKind InferencePool: one pool per arm (apply)
    "networkpolicies": {"get", "patch", "list", "delete"},  # spec.networkPolicy: applied, listed, pruned when off
    "leases": {"get", "create", "update"},  # leader election (leader.py), in the operator's own namespace only
}
# Waiting reasons of a container that will not run without a change: reported as Degraded.
BACK_OFF_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})
# Fields of a child that change without anyone changing what we render.
_VOLATILE_METADATA = ("resourceVersion", "managedFields", "generation")


class Rejected(Exception):
    """The apiserver refused a rendered child (400/422): a permanent error until the spec changes."""

    def __init__(self, child: str, message: str):
        super().__init__(f"{child}: {message}")
        self.child = child
        self.message = message


def load_configuration(kubeconfig: str | None = None) -> kubernetes.client.Configuration:
    """An explicit kubeconfig wins; else in-cluster config when running in a pod; else $KUBECONFIG/~/.kube."""
    config = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    return config


def load_api_client(kubeconfig: str | None = None) -> ApiClient:
    config = load_configuration(kubeconfig)
    config.connection_pool_maxsize = 32  # reconciles run in a thread pool
    # Retry only connecting: a request that reached the server is not repeated behind the caller's back (its
    # read timeout then bounds the call), and reconciles are retried whole by the resync anyway.
    config.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0)
    return ApiClient(config)


def error_message(exc: ApiException) -> str:
    """The apiserver's own message (a Status object's `message`), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}"


def _names_object(exc: ApiException, name: str) -> bool:
    """A 404 about the object itself (its Status names it), not about the resource type being unknown."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and (body.get("details") or {}).get("name") == name


def rendered_content(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what changes on its own (status, resourceVersion, managedFields, generation)."""
    content = {k: v for k, v in obj.items() if k != "status"}
    content["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE_METADATA}
    return content


@dataclass(frozen=True)
class PodProblems:
    pending: list[PendingPod]
    failing: list[FailingPod]


def deployment_state_of(dep: dict[str, Any]) -> DeploymentState:
    """The parts of a Deployment's status that matter for ours."""
    status = dep.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    progressing: dict[str, Any] = next((c for c in conditions if c.get("type") == "Progressing"), {})
    return DeploymentState(
        desired=int(dep["spec"].get("replicas", 1)),
        replicas=int(status.get("replicas", 0)),
        ready=int(status.get("readyReplicas", 0)),
        updated=int(status.get("updatedReplicas", 0)),
        up_to_date=int(status.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 0)),
        progress_deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded"
        and progressing.get("status") == "False",
        progress_message=str(progressing.get("message") or ""),
    )


def pod_problems_of(pods: list[dict[str, Any]]) -> PodProblems:
    """Serving pods that are not running yet (Pending) or cannot run (a container in a back-off)."""
    pending: list[PendingPod] = []
    failing: list[FailingPod] = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in BACK_OFF_REASONS:
                last = (container.get("lastState") or {}).get("terminated") or {}
                failing.append(FailingPod(
                    name=meta["name"], container=container.get("name", ""), reason=waiting["reason"],
                    restarts=int(container.get("restartCount", 0)),
                    exit_code=last.get("exitCode"),
                    last_message=str(last.get("message") or last.get("reason") or waiting.get("message") or ""),
                ))
        if status.get("phase") != "Pending":
            continue
        conditions: list[dict[str, str]] = status.get("conditions", [])
        scheduled = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
        if scheduled.get("status") == "True":
            waiting = next((((c.get("state") or {}).get("waiting") or {})
                            for c in status.get("containerStatuses") or []), {})
            reason = waiting.get("reason") or "ContainerCreating"
            message = waiting.get("message") or f"scheduled on {pod['spec'].get('nodeName')}, starting"
        else:
            reason = scheduled.get("reason") or "Pending"
            message = scheduled.get("message") or "waiting to be scheduled"
        pending.append(PendingPod(name=meta["name"], reason=reason, message=message,
                                  since=parse_time(meta.get("creationTimestamp"))))
    return PodProblems(pending=pending, failing=failing)


class Cluster:
    """Typed verbs the reconciler needs; everything else in the operator is pure."""

    def __init__(self, api: ApiClient, *, connect_timeout: float = 10.0, read_timeout: float = 30.0):
        self._api = api
        self._timeout = (connect_timeout, read_timeout)

    def _call(
        self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One REST call; JSON in and out. Raises ApiException (with .status) on a non-2xx answer, and
        urllib3's TimeoutError/MaxRetryError once the connect or read timeout has passed."""
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
        )
        response = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=self._timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    @staticmethod
    def _collection(api_version: str, kind: str, namespace: str) -> str:
        return _PATHS[(api_version, kind)].format(namespace=namespace)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", f"{self._collection(api_version, kind, namespace)}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def get_lad(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(_LAD_API_VERSION, models.KIND, namespace, name)

    def _server_side_apply(self, manifest: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = f"{self._collection(manifest['apiVersion'], manifest['kind'], meta['namespace'])}/{meta['name']}"
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")] + ([("dryRun", "All")] if dry_run else [])
        try:
            result: dict[str, Any] = self._call(
                "PATCH", path, body=manifest, content_type="application/apply-patch+yaml", query=query
            )
        except ApiException as exc:
            if exc.status in (400, 422):
                raise Rejected(f"{manifest['kind']}/{meta['name']}", error_message(exc)) from None
            raise
        return result

    def plan_apply(self, manifest: dict[str, Any]) -> ApplyResult:
        """What applying `manifest` would do, decided from content: the live object against the apiserver's
        own dry run of the apply (defaults, admission and the merge with other managers' fields all
        included). A status write by another controller changes neither side, so it never reads as a hand
        edit. Raises Rejected if the apiserver would refuse it; nothing is written."""
        meta = manifest["metadata"]
        live = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        planned = self._server_side_apply(manifest, dry_run=True)
        if live is None:
            return "created"
        return "unchanged" if rendered_content(live) == rendered_content(planned) else "updated"

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply one child (raises Rejected on 400/422)."""
        self._server_side_apply(manifest, dry_run=False)

    def deployment_state(self, namespace: str, name: str) -> DeploymentState | None:
        dep = self.get("apps/v1", "Deployment", namespace, name)
        return None if dep is None else deployment_state_of(dep)

    def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The objects of one kind a label selector finds (the children's inventory)."""
        found = self._call("GET", self._collection(api_version, kind, namespace), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = found.get("items", []) if found else []
        return items

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete one child (background propagation: its pods go through the garbage collector); with `uid`, only
        that incarnation (a precondition), so a pass never deletes an object recreated meanwhile. Gone is done."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", f"{self._collection(api_version, kind, namespace)}/{name}", body=body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.list_objects("v1", "Pod", namespace, selector)

    def pod_problems(self, namespace: str, selector: str) -> PodProblems:
        """Serving pods that are not running yet (Pending) or cannot run (a container in a back-off)."""
        return pod_problems_of(self.pods(namespace, selector))

    def get_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The user's HTTPRoute (None: no such route); RouterError when the Gateway API is not installed."""
        path = f"{self._collection(_ROUTE_API_VERSION, 'HTTPRoute', namespace)}/{name}"
        try:
            found: dict[str, Any] = self._call("GET", path)
        except ApiException as exc:
            if exc.status == 404 and _names_object(exc, name):
                return None
            if exc.status == 404:
                raise RouterError("the HTTPRoute API (gateway.networking.k8s.io/v1) is not installed; "
                                  "traffic was not changed") from None
            raise RouterError(f"HTTPRoute {namespace}/{name}: {error_message(exc)}") from None
        return found

    def patch_route(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A merge patch of the route (the router's: weights only, with the resourceVersion it read)."""
        path = f"{self._collection(_ROUTE_API_VERSION, 'HTTPRoute', namespace)}/{name}"
        try:
            written: dict[str, Any] | None = self._call("PATCH", path, body=dict(body),
                                                        content_type="application/merge-patch+json")
        except ApiException as exc:
            raise RouterError(f"HTTPRoute {namespace}/{name}: {error_message(exc)}") from None
        return written

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("coordination.k8s.io/v1", "Lease", namespace, name)

    def create_lease(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create the leader-election Lease; None when another replica created it first (409)."""
        return self._write_lease("POST", self._collection("coordination.k8s.io/v1", "Lease",
                                                          body["metadata"]["namespace"]), body)

    def update_lease(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Replace the Lease (PUT with the resourceVersion read: optimistic concurrency); None on a conflict
        (409: another replica wrote it since)."""
        meta = body["metadata"]
        path = f"{self._collection('coordination.k8s.io/v1', 'Lease', meta['namespace'])}/{meta['name']}"
        return self._write_lease("PUT", path, body)

    def _write_lease(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            written: dict[str, Any] = self._call(method, path, body=body)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return written

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = f"{self._collection(_LAD_API_VERSION, models.KIND, namespace)}/{name}/status"
        self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    def scale_lad(self, namespace: str, name: str, replicas: int) -> None:
        """Set a LAD's spec.replicas through its scale subresource (the autoscaler's write, as an HPA's would be)."""
        path = f"{self._collection(_LAD_API_VERSION, models.KIND, namespace)}/{name}/scale"
        self._call("PATCH", path, body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")

    def emit_event(self, owner: dict[str, Any], event: Event) -> None:
        """A core/v1 Event on the LocalAttnDeployment (what `kubectl describe lad` shows).

        The name is derived from the owner's resourceVersion and the event itself: a pass repeated after a
        crash (the status that records the transition was not written, so the resourceVersion is the same)
        posts the same name again and gets AlreadyExists instead of a duplicate.
        """
        meta = owner["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = f"{meta['uid']}/{meta.get('resourceVersion')}/{event.type}/{event.reason}/{event.message}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name'][:200]}.{hashlib.sha256(key.encode()).hexdigest()[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": _LAD_API_VERSION, "kind": models.KIND, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("HOSTNAME", "localattn-operator"),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call("POST", self._collection("v1", "Event", meta["namespace"]), body=body)
        except ApiException as exc:
            if exc.status == 409:  # posted by a pass that died before recording it: already there
                return
            if exc.status == 429 or exc.status >= 500:  # transient: fail the pass, the status is not written
                raise                                    # yet, so the retry recomputes and posts the event
            # refused for good (e.g. forbidden): logged; never let it block the status, the source of truth
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], exc.reason)
