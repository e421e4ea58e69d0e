"""The dev cluster's Prometheus: its files, config and command line (pure).

Debian's `prometheus` 2.42 (no Kubernetes discovery): the pods come from a file-SD JSON that the data
plane's pod watch keeps current (`localattn_dev.discovery`); Prometheus notices a rewritten file at once
(inotify). A second file-SD job takes the operator's `/metrics` when something running it locally drops a
target file `operator*.json` into the targets directory (`operator_target_file`, `operator_target`; the demo
does, so the Grafana dashboard's operator panels have data; nothing else depends on it).
Scrape and evaluation every 2 s, so tests and the rollout analysis see load within seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from localattn_dev.discovery import JOB

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL = "2s"
OPERATOR_JOB = "localattn-operator"


@dataclass(frozen=True)
class PrometheusFiles:
    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "prometheus"

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def pods_file(self) -> Path:
        return self.targets / "pods.json"


def config(files: PrometheusFiles) -> str:
    document = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "file_sd_configs": [{"files": [str(files.pods_file)], "refresh_interval": "30s"}],
            },
            {
                "job_name": OPERATOR_JOB,
                "file_sd_configs": [{"files": [str(files.targets / "operator*.json")], "refresh_interval": "30s"}],
            },
        ],
    }
    return "# Written by `localattn dev up`.\n" + yaml.safe_dump(document, sort_keys=False)


def operator_target_file(files: PrometheusFiles, name: str) -> Path:
    """Where whoever runs an operator locally as `name` puts its target (the operator job's file-SD glob)."""
    return files.targets / f"operator-{name}.json"


def operator_target(host: str, port: int) -> str:
    """The file-SD document for a local operator's `/metrics` at host:port. No target labels: the operator's
    metrics carry `namespace` and `lad` themselves, and a target label of the same name would rename them."""
    return json.dumps([{"targets": [f"{host}:{port}"], "labels": {}}]) + "\n"


def prometheus_argv(files: PrometheusFiles, port: int, binary: str = PROMETHEUS) -> list[str]:
    return [
        binary,
        "--config.file", str(files.config),
        "--storage.tsdb.path", str(files.data),
        "--storage.tsdb.retention.time", "2d",
        "--web.listen-address", f"127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]  # fmt: skip


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"
