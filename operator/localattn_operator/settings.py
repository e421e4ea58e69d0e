"""Operator settings from the environment (the Helm chart sets them), with safe defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    resync_seconds: float = 60.0
    coalesce_seconds: float = 0.3
    metrics_port: int = 8080
    # Reconciles are API-latency bound (a dozen round trips each), not CPU bound: run many at once.
    reconcile_threads: int = 32

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            resync_seconds=float(os.environ.get("LOCALATTN_RESYNC_SECONDS", cls.resync_seconds)),
            coalesce_seconds=float(os.environ.get("LOCALATTN_COALESCE_SECONDS", cls.coalesce_seconds)),
            metrics_port=int(os.environ.get("LOCALATTN_METRICS_PORT", cls.metrics_port)),
            reconcile_threads=int(os.environ.get("LOCALATTN_RECONCILE_THREADS", cls.reconcile_threads)),
        )
