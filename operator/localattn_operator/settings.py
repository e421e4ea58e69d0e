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
    # Every API call of a reconcile: connecting, then waiting for the answer. A half-open connection fails the
    # pass after these, instead of hanging it while it holds the object's lock.
    api_connect_timeout_seconds: float = 10.0
    api_timeout_seconds: float = 30.0
    # kopf's watch streams: the apiserver ends each after server_timeout (whole seconds: it is the watch's
    # `timeoutSeconds`, which the apiserver parses as an integer), the client gives up a little later (a stream
    # that went silent on a dead connection), then kopf reconnects.
    watch_server_timeout_seconds: int = 300
    watch_client_timeout_seconds: float = 330.0
    # Pods Pending for less than this are merely starting (image pull, scheduling): no Warning, no Degraded.
    pending_grace_seconds: float = 60.0
    # An explicit kubeconfig (`localattn operator run --kubeconfig`); wins over the in-cluster configuration.
    kubeconfig: str | None = None
    # The rollout analysis' Prometheus when a LAD's spec.analysis.provider names none (`http://prometheus:9090`).
    prometheus_url: str | None = None
    # Threads measuring analysis windows (slow metric queries never run on the reconcile threads).
    measure_threads: int = 4
    # Leader election (leader.py): the namespace of the Lease (the chart sets the operator's own); None: this
    # process is the only operator (a local run), nothing elected.
    leader_election_namespace: str | None = None
    lease_name: str = "localattn-operator"
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    leader_identity: str | None = None  # default: HOSTNAME (the pod's name) plus a random suffix
    # kopf's liveness endpoint (`--liveness`): a follower answers on it itself while kopf waits to start.
    liveness_endpoint: str | None = None
    # spec.autoscaling: a decision on freshly measured load this often (the HPA's sync period), each over vLLM's
    # gauges averaged across this window (smooths a scrape's noise; short enough to see a step within it).
    autoscale_interval_seconds: float = 15.0
    autoscale_window_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            resync_seconds=float(env("LOCALATTN_RESYNC_SECONDS", cls.resync_seconds)),
            coalesce_seconds=float(env("LOCALATTN_COALESCE_SECONDS", cls.coalesce_seconds)),
            metrics_port=int(env("LOCALATTN_METRICS_PORT", cls.metrics_port)),
            reconcile_threads=int(env("LOCALATTN_RECONCILE_THREADS", cls.reconcile_threads)),
            api_connect_timeout_seconds=float(env("LOCALATTN_API_CONNECT_TIMEOUT_SECONDS", cls.api_connect_timeout_seconds)),
            api_timeout_seconds=float(env("LOCALATTN_API_TIMEOUT_SECONDS", cls.api_timeout_seconds)),
            watch_server_timeout_seconds=int(
                env("LOCALATTN_WATCH_SERVER_TIMEOUT_SECONDS", cls.watch_server_timeout_seconds)
            ),
            watch_client_timeout_seconds=float(
                env("LOCALATTN_WATCH_CLIENT_TIMEOUT_SECONDS", cls.watch_client_timeout_seconds)
            ),
            pending_grace_seconds=float(env("LOCALATTN_PENDING_GRACE_SECONDS", cls.pending_grace_seconds)),
            kubeconfig=env("LOCALATTN_KUBECONFIG") or None,
            prometheus_url=env("LOCALATTN_PROMETHEUS_URL") or None,
            measure_threads=int(env("LOCALATTN_MEASURE_THREADS", cls.measure_threads)),
            leader_election_namespace=env("LOCALATTN_LEADER_ELECTION_NAMESPACE") or None,
            lease_name=env("LOCALATTN_LEASE_NAME") or cls.lease_name,
            lease_duration_seconds=float(env("LOCALATTN_LEASE_DURATION_SECONDS", cls.lease_duration_seconds)),
            renew_deadline_seconds=float(env("LOCALATTN_RENEW_DEADLINE_SECONDS", cls.renew_deadline_seconds)),
            retry_period_seconds=float(env("LOCALATTN_RETRY_PERIOD_SECONDS", cls.retry_period_seconds)),
            leader_identity=env("LOCALATTN_LEADER_IDENTITY") or None,
            liveness_endpoint=env("LOCALATTN_LIVENESS_ENDPOINT") or None,
            autoscale_interval_seconds=float(env("LOCALATTN_AUTOSCALE_INTERVAL_SECONDS", cls.autoscale_interval_seconds)),
            autoscale_window_seconds=float(env("LOCALATTN_AUTOSCALE_WINDOW_SECONDS", cls.autoscale_window_seconds)),
        )
