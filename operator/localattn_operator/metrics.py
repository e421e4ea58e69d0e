"""The operator's own Prometheus metrics (served by `localattn operator run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "localattn_operator_reconciles_total", "Reconcile passes of LocalAttnDeployments", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "localattn_operator_reconcile_duration_seconds",
    "Wall time of one reconcile pass",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)
