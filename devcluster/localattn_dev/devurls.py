"""Where to reach things of a running dev cluster from this machine: a Service's or an HTTPRoute's proxy
address, Prometheus."""

from __future__ import annotations

import json
from pathlib import Path

from localattn_dev.components import Layout
from localattn_dev.haproxycfg import ProxyFiles
from localattn_dev.paths import resolve_state_dir
from localattn_dev.prometheus import url as prometheus_url
from localattn_dev.routemodel import KEY_PREFIX


def url_of(name: str, namespace: str = "default", state_dir: Path | str | None = None) -> str | None:
    """`http://127.2.x.y:PORT` of Service `namespace/name` (its first port), of HTTPRoute `namespace/ROUTE`
    for the name `httproute/ROUTE`, or Prometheus' URL for the name `prometheus`; None when the cluster does
    not know it (no such Service or route, or no proxy sync yet)."""
    sd = resolve_state_dir(state_dir)
    if name == "prometheus":
        try:
            port = json.loads(Layout(sd).state_file.read_text()).get("ports", {}).get("prometheus")
        except (OSError, ValueError):
            return None
        return prometheus_url(int(port)) if port else None
    try:
        urls = json.loads(ProxyFiles(sd).urls.read_text())
    except (OSError, ValueError):
        return None
    kind, _, route = name.partition("/")
    key = f"{KEY_PREFIX}{namespace}/{route}" if route and kind.lower() in ("httproute", "httproutes") \
        else f"{namespace}/{name}"
    found = urls.get(key) or []
    return str(found[0]) if found else None
