"""The only module that talks to the Kubernetes API (besides kopf's own watching).

Plain REST over the official client's ApiClient, on apps/v1, core/v1 and our CRD only: these are served
identically by Kubernetes 1.20 and current releases. Children are written with server-side apply (`force`),
which makes the operator the owner of every field it renders: a hand edit of one of them is undone on the
next reconcile, while fields it does not render (e.g. added by other controllers) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localattn_operator import models
from localattn_operator.status import ApplyResult, DeploymentState, Event, PendingPod

FIELD_MANAGER = "localattn-operator"
log = logging.getLogger(__name__)

_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{namespace}/events",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
    (f"{models.GROUP}/{models.VERSION}", models.KIND): (
        f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{{namespace}}/{models.PLURAL}"
    ),
}
_LAD_API_VERSION = f"{models.GROUP}/{models.VERSION}"


def load_api_client(kubeconfig: str | None = None) -> ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (argument, $KUBECONFIG, ~/.kube)."""
    config = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    config.connection_pool_maxsize = 32  # reconciles run in a thread pool
    return ApiClient(config)


class Cluster:
    """Typed verbs the reconciler needs; everything else in the operator is pure."""

    def __init__(self, api: ApiClient):
        self._api = api

    def _call(
        self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One REST call; JSON in and out. Raises ApiException (with .status) on a non-2xx answer."""
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
        )
        response = self._api.call_api(method, url, header_params=headers, body=body)
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

    def apply(self, manifest: dict[str, Any]) -> ApplyResult:
        """Server-side apply one child; report whether it was created, changed, or already as rendered."""
        meta = manifest["metadata"]
        path = f"{self._collection(manifest['apiVersion'], manifest['kind'], meta['namespace'])}/{meta['name']}"
        before = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        after = self._call(
            "PATCH", path, body=manifest, content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        if before is None:
            return "created"
        changed = before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]
        return "updated" if changed else "unchanged"

    def deployment_state(self, namespace: str, name: str) -> DeploymentState | None:
        dep = self.get("apps/v1", "Deployment", namespace, name)
        if dep is None:
            return None
        status = dep.get("status") or {}
        return DeploymentState(
            desired=int(dep["spec"].get("replicas", 1)),
            replicas=int(status.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            up_to_date=int(status.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 0)),
        )

    def pending_pods(self, namespace: str, selector: str) -> list[PendingPod]:
        pods = self._call(
            "GET", self._collection("v1", "Pod", namespace),
            query=[("labelSelector", selector), ("fieldSelector", "status.phase=Pending")],
        )
        pending = []
        for pod in pods.get("items", []):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conditions: list[dict[str, str]] = (pod.get("status") or {}).get("conditions", [])
            scheduled = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
            pending.append(
                PendingPod(
                    name=pod["metadata"]["name"],
                    reason=scheduled.get("reason") or "Pending",
                    message=scheduled.get("message") or "waiting to be scheduled or started",
                )
            )
        return pending

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = f"{self._collection(_LAD_API_VERSION, models.KIND, namespace)}/{name}/status"
        self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    def emit_event(self, owner: dict[str, Any], event: Event) -> None:
        """A core/v1 Event on the LocalAttnDeployment (what `kubectl describe lad` shows)."""
        meta = owner["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
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
        except ApiException as exc:  # events are best effort: never fail a reconcile on them
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], exc.reason)
