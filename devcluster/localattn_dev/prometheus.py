"""The dev cluster's Prometheus: its files, config and command line (pure).

Debian's `prometheus` 2.42 (no Kubernetes discovery): the pods come from a file-SD JSON that the data
plane's pod watch keeps current (`localattn_dev.discovery`); Prometheus notices a rewritten file at once
(inotify). A second file-SD job takes the operator's `/metrics` when something running it locally drops a
target file `operator*.json` into the targets directory (optional; nothing else depends on it).
Scrape and evaluation every 2 s, so tests and the rollout analysis see load within seconds.
"""

from __future__ import annotations

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
