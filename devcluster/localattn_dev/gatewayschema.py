"""The dev cluster's own Gateway API schema (HTTPRoute) and its installation at `dev up`.

No registry reachable here ships the Gateway API CRDs, so the dev cluster carries a structural subset of
its own (`crds/httproute.yaml`: upstream's group, version, kind and field names, for the fields the
gatewayAPI traffic router and the service proxy use). It is the one definition: `dev up` installs it, the
tests use it. A cluster that already has an HTTPRoute CRD not marked as ours (a real Gateway API install
on an external cluster) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

CRD_FILE = Path(__file__).resolve().parent / "crds" / "httproute.yaml"
OURS = ("localattn.dev/schema", "dev-subset")  # the annotation that marks the CRD as this file's


UPSTREAM_MARK = "gateway.networking.k8s.io/bundle-version"  # on every CRD of an upstream Gateway API release
DIGEST = "localattn.dev/schema-digest"  # of the file: `dev up` replaces an installed CRD of an older version


def httproute_crd() -> dict[str, Any]:
    """The CRD manifest (a fresh copy each call), carrying the digest of the file it came from."""
    text = CRD_FILE.read_text()
    crd = dict(yaml.safe_load(text))
    crd["metadata"]["annotations"][DIGEST] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return crd


def crd_name() -> str:
    return str(httproute_crd()["metadata"]["name"])


def _ours(crd: dict[str, Any]) -> bool:
    """Installed from this file (marked), or by this project's tests before the mark existed: upstream's
    Gateway API CRDs always carry `gateway.networking.k8s.io/bundle-version`; ours never did."""
    annotations = crd["metadata"].get("annotations") or {}
    return annotations.get(OURS[0]) == OURS[1] or UPSTREAM_MARK not in annotations


def _established(crd: dict[str, Any]) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


def ensure_installed(kubeconfig: Path | str, timeout: float = 30.0) -> bool:
    """Create (or update to this file's version) the HTTPRoute CRD and wait until it is served; False when an
    HTTPRoute CRD that is not ours is already there (kept as it is)."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    wanted = httproute_crd()
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        api: Any = client.ApiextensionsV1Api(api_client)  # dicts in, raw JSON out: the typed models are not needed
        name = wanted["metadata"]["name"]
        try:
            api.create_custom_resource_definition(wanted, _request_timeout=30)
        except ApiException as e:
            if e.status != 409:
                raise
            live = json.loads(api.read_custom_resource_definition(name, _preload_content=False,
                                                                  _request_timeout=30).data)
            if not _ours(live):
                return False
            if (live["metadata"].get("annotations") or {}).get(DIGEST) != wanted["metadata"]["annotations"][DIGEST]:
                wanted["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                api.replace_custom_resource_definition(name, wanted, _request_timeout=30)
        deadline = time.monotonic() + timeout
        while True:
            live = json.loads(api.read_custom_resource_definition(name, _preload_content=False,
                                                                  _request_timeout=30).data)
            if _established(live):
                return True
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established after {timeout:.0f}s")
            time.sleep(0.1)
    finally:
        api_client.close()
