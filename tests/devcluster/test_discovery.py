"""File-SD targets of the dev cluster's pods (pure) and the Prometheus config that reads them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from localattn_dev import discovery, prometheus


def pod(
    name: str,
    ip: str | None = "127.1.0.2",
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (8000,),
    ns: str = "team",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "nodeName": "localattn-gpu-0",
            "containers": [{"name": "server", "ports": [{"name": "http", "containerPort": p} for p in ports]}],
        },
        "status": status,
    }


LAD_LABELS = {
    "localattn.dev/deployment": "chat",
    "localattn.dev/revision": "abc123",
    "localattn.dev/track": "canary",
    "app.kubernetes.io/managed-by": "localattn-operator",
}
SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}


def test_a_lad_pod_gets_exactly_the_convention_labels() -> None:
    groups = discovery.pod_target_groups(pod("chat-1", labels=LAD_LABELS, annotations=SCRAPE))
    assert groups == [
        {
            "targets": ["127.1.0.2:8000"],
            "labels": {
                "__metrics_path__": "/metrics",
                "namespace": "team",
                "pod": "chat-1",
                "node": "localattn-gpu-0",
                "lad": "chat",
                "revision": "abc123",
                "track": "canary",
            },
        }
    ]


def test_only_running_annotated_loopback_pods_are_targets() -> None:
    no_track = {k: v for k, v in LAD_LABELS.items() if k != "localattn.dev/track"}
    pods = [
        pod("a", labels=no_track, annotations={**SCRAPE, "prometheus.io/path": "/m"}),
        pod("off", annotations={**SCRAPE, "prometheus.io/scrape": "false"}),
        pod("pending", ip=None, phase="Pending", annotations=SCRAPE),
        pod("done", phase="Succeeded", annotations=SCRAPE),
        pod("far", ip="10.0.0.9", annotations=SCRAPE),  # never scraped: not loopback
        pod("ports", ip="127.1.0.3", annotations={"prometheus.io/scrape": "true"}, ports=(8001, 8000)),
    ]
    groups = discovery.target_groups(pods)
    assert [(g["labels"]["pod"], g["targets"]) for g in groups] == [
        ("a", ["127.1.0.2:8000"]),
        ("ports", ["127.1.0.3:8000"]),
        ("ports", ["127.1.0.3:8001"]),
    ]
    first = groups[0]["labels"]
    assert "track" not in first and first["__metrics_path__"] == "/m"
    assert groups[1]["labels"]["__metrics_path__"] == "/metrics"
    assert json.loads(discovery.render_file_sd(pods)) == groups


def test_prometheus_config_is_valid_for_the_real_prometheus(tmp_path: Path) -> None:
    files = prometheus.PrometheusFiles(tmp_path)
    files.root.mkdir(parents=True)
    files.config.write_text(prometheus.config(files))
    check = subprocess.run(["promtool", "check", "config", str(files.config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = files.config.read_text()
    assert "scrape_interval: 2s" in text and "evaluation_interval: 2s" in text and discovery.JOB in text
    argv = prometheus.prometheus_argv(files, 9999)
    assert argv[argv.index("--web.listen-address") + 1] == "127.0.0.1:9999"
    assert argv[argv.index("--storage.tsdb.path") + 1] == str(files.data)
