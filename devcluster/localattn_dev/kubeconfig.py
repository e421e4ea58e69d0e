"""Kubeconfig files for the dev cluster's users, and a probe that tells whether a kubeconfig's cluster answers."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "localattn-dev"


def render(server: str, ca_crt: Path, token: str, user: str = "admin") -> dict[str, Any]:
    """A self-contained kubeconfig (CA embedded) that authenticates with a bearer token."""
    ca_data = base64.b64encode(ca_crt.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user, "namespace": "default"}}
        ],
        "current-context": CONTEXT,
    }


def write(path: Path, config: dict[str, Any]) -> Path:
    """Write atomically with mode 0600 (it holds a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    tmp.replace(path)
    return path


def server_of(kubeconfig: Path | str) -> str | None:
    """The current context's server URL (first file of a `:`-separated list), or None if unreadable."""
    first = str(kubeconfig).split(os.pathsep)[0]
    try:
        config = yaml.safe_load(Path(first).read_text()) or {}
        current = config.get("current-context")
        context = next(c["context"] for c in config.get("contexts", []) if c["name"] == current)
        cluster = next(c["cluster"] for c in config.get("clusters", []) if c["name"] == context["cluster"])
        return str(cluster["server"])
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        return None


def answers(kubeconfig: Path | str, timeout: float = 3.0) -> bool:
    """The cluster behind `kubeconfig` serves `/version` to its credentials within `timeout` seconds."""
    from kubernetes import client, config  # heavy; only when actually probing

    try:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
    except Exception:
        return False
    try:
        client.VersionApi(api_client).get_code(_request_timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        api_client.close()
