"""Prometheus targets of the dev cluster's pods, as file service discovery reads them (pure).

Debian's Prometheus has no `kubernetes_sd_configs`, so the dev cluster lists its pods itself and writes a
file-SD JSON. The label set must be exactly what a production Prometheus gets from `kubernetes_sd_configs`
(role pod) with the relabelling in examples/prometheus-scrape.yaml, so PromQL written here works unchanged
there (tests/devcluster/test_discovery_relabel.py checks it with the real Prometheus relabelling code):

    namespace, pod, node, lad (label localattn.dev/deployment), revision (localattn.dev/revision),
    track (localattn.dev/track), job="localattn-pods", instance=<podIP>:<port>

Prometheus drops labels with an empty value, so an absent label (a pod with no track) is simply omitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from localattn_dev.proxymodel import is_loopback

JOB = "localattn-pods"
SCRAPE = "prometheus.io/scrape"
PORT = "prometheus.io/port"
PATH = "prometheus.io/path"
POD_LABEL_TARGETS = {
    "localattn.dev/deployment": "lad",
    "localattn.dev/revision": "revision",
    "localattn.dev/track": "track",
}


def scrape_ports(pod: Mapping[str, Any]) -> list[int]:
    """The annotated port, else every declared port of the (non-init) containers, as role pod gives one
    target per container port and the relabelling rewrites each one's port to the annotation's."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if str(annotations.get(PORT, "")).isdigit():
        return [int(annotations[PORT])]
    ports = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        ports += [int(p["containerPort"]) for p in container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
    return sorted(set(ports))


def pod_target_groups(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """File-SD groups for one pod (empty when it is not to be scraped): running, annotated
    `prometheus.io/scrape: "true"`, with a loopback pod IP (the dev cluster never scrapes anything else)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    ip = str(status.get("podIP") or "")
    if annotations.get(SCRAPE) != "true" or status.get("phase") != "Running" or not is_loopback(ip):
        return []
    pod_labels = meta.get("labels") or {}
    labels = {
        "__metrics_path__": str(annotations.get(PATH) or "/metrics"),
        "namespace": str(meta.get("namespace") or ""),
        "pod": str(meta.get("name") or ""),
        "node": str((pod.get("spec") or {}).get("nodeName") or ""),
    }
    labels.update({target: str(pod_labels.get(source) or "") for source, target in POD_LABEL_TARGETS.items()})
    labels = {k: v for k, v in labels.items() if v}
    return [{"targets": [f"{ip}:{port}"], "labels": labels} for port in scrape_ports(pod)]


def target_groups(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """All groups, in a stable order (so an unchanged cluster rewrites nothing)."""
    groups = [g for pod in pods for g in pod_target_groups(pod)]
    return sorted(groups, key=lambda g: (g["labels"].get("namespace", ""), g["labels"].get("pod", ""), g["targets"]))


def render_file_sd(pods: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(target_groups(pods), indent=1, sort_keys=True) + "\n"

