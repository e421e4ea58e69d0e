"""Probes of a running cluster (HTTP health endpoints, node readiness) and its one-time API setup."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from localattn_dev.components import Layout, Ports, server_url


def http_ok(
    url: str,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
    timeout: float = 2.0,
    method: str = "GET",
) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def insecure_context() -> ssl.SSLContext:
    # controller-manager and scheduler serve /healthz with self-signed in-memory certs; only liveness matters.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def apiserver_ready(layout: Layout, ports: Ports, context: ssl.SSLContext | None = None) -> bool:
    if context is None:
        try:
            context = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
        except OSError:
            return False
    return http_ok(f"{server_url(ports)}/readyz", context)


def ensure_default_namespace(kubeconfig: Path) -> None:
    """`default` namespace and ServiceAccount exist before anyone creates pods (no race with the controllers)."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core = client.CoreV1Api(api_client)
        for create, body in (
            (lambda b: core.create_namespace(b), {"metadata": {"name": "default"}}),
            (
                lambda b: core.create_namespaced_service_account("default", b),
                {"metadata": {"name": "default"}},
            ),
        ):
            try:
                create(body)
            except ApiException as e:
                if e.status != 409:
                    raise
    finally:
        api_client.close()


def nodes_ready(kubeconfig: Path, names: list[str]) -> bool:
    from kubernetes import client, config

    try:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
    except Exception:
        return False
    try:
        raw: Any = client.CoreV1Api(api_client).list_node(_preload_content=False, _request_timeout=5)
        items = json.loads(raw.data)["items"]
    except Exception:
        return False
    finally:
        api_client.close()
    ready = {n["metadata"]["name"] for n in items if schedulable(n)}
    return set(names) <= ready


def schedulable(node: dict[str, Any]) -> bool:
    """Ready, and the not-ready taint that admission puts on every new node already lifted by the node
    lifecycle controller (a few seconds after the first heartbeat): pods created now schedule at once."""
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
    return ready and not taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
