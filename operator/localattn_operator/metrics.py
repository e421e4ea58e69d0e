"""The operator's own Prometheus metrics (served by `localattn operator run --metrics-port`)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "localattn_operator_reconciles_total", "Reconcile passes of LocalAttnDeployments", ["result"]
)
LEADER = Gauge(
    "localattn_operator_leader", "1 on the replica that holds the leader-election Lease and reconciles, 0 on followers"
)
RECONCILE_SECONDS = Histogram(
    "localattn_operator_reconcile_duration_seconds",
    "Wall time of one reconcile pass",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Autoscaler (spec.autoscaling): the same facts as its events and status.autoscaling.
AUTOSCALER_DESIRED_REPLICAS = Gauge(
    "localattn_operator_autoscaler_desired_replicas", "Replicas the autoscaler decided (the LAD's total)",
    ["namespace", "lad"],
)
AUTOSCALER_DECISIONS = Counter(
    "localattn_operator_autoscaler_decisions_total",
    "Autoscaler decisions by direction (up, down, hold) and the signal that drove them",
    ["namespace", "lad", "direction", "signal"],
)
AUTOSCALER_HEADROOM = Gauge(
    "localattn_operator_autoscaler_headroom_sequences",
    "Measured concurrent sequences each ready replica's KV cache can still admit (NaN: unmeasured)",
    ["namespace", "lad"],
)
AUTOSCALER_GPU_LIMITED = Gauge(
    "localattn_operator_autoscaler_gpu_limited", "1 while new replicas stay Pending for lack of GPUs",
    ["namespace", "lad"],
)


def observe_autoscaling(namespace: str, lad: str, *, desired: int, direction: str, signal: str,
                        headroom: float | None, gpu_limited: bool) -> None:
    """Export one autoscaler decision (call once per decision, after its status is written)."""
    AUTOSCALER_DESIRED_REPLICAS.labels(namespace, lad).set(desired)
    AUTOSCALER_DECISIONS.labels(namespace, lad, direction, signal).inc()
    AUTOSCALER_HEADROOM.labels(namespace, lad).set(float("nan") if headroom is None else headroom)
    AUTOSCALER_GPU_LIMITED.labels(namespace, lad).set(1 if gpu_limited else 0)


# Rollouts: the same facts as their events and status.rollout.
ROLLOUTS = Counter(
    "localattn_operator_rollouts_total", "Rollout transitions (started, promoted, rolled_back, aborted)",
    ["namespace", "lad", "result"],
)
ANALYSIS_VERDICTS = Counter(
    "localattn_operator_analysis_verdicts_total", "Analysis gate results by gate and phase",
    ["namespace", "lad", "gate", "phase"],
)
CANARY_WEIGHT = Gauge(
    "localattn_operator_canary_weight_percent", "The canary's achieved traffic weight", ["namespace", "lad"],
)
PAIRED_AGREEMENT = Gauge(
    "localattn_operator_paired_agreement",
    "Paired comparison's greedy token agreement (canary vs stable, same prompts) at the last analysis, per bucket",
    ["namespace", "lad", "bucket"],
)
ROLLOUT_STEP = Gauge(
    "localattn_operator_rollout_step",
    "1-based index of the rollout step the canary is at (status.rollout.stepIndex + 1); 0: no canary",
    ["namespace", "lad"],
)
ANALYSIS_SECONDS = Histogram(
    "localattn_operator_analysis_duration_seconds", "Wall time of measuring one analysis window",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_ROLLOUT_RESULTS = {"RolloutStarted": "started", "RolloutSuperseded": "started", "Promoted": "promoted",
                    "RolledBack": "rolled_back", "RolloutAborted": "aborted"}


def observe_rollout(namespace: str, lad: str, *, event_reasons: list[str], achieved_weight: int,
                    gates: list[tuple[str, str]], step: int = 0,
                    paired: Sequence[tuple[str, float]] = ()) -> None:
    """Export one pass's rollout facts (after its status is written): transitions, consumed gates, weight,
    step (`step`: 1-based, 0 without a canary) and a consumed window's paired agreement per bucket."""
    for reason in event_reasons:
        if reason in _ROLLOUT_RESULTS:
            ROLLOUTS.labels(namespace, lad, _ROLLOUT_RESULTS[reason]).inc()
    for gate, phase in gates:
        ANALYSIS_VERDICTS.labels(namespace, lad, gate, phase).inc()
    CANARY_WEIGHT.labels(namespace, lad).set(achieved_weight)
    ROLLOUT_STEP.labels(namespace, lad).set(step)
    for bucket, agreement in paired:
        PAIRED_AGREEMENT.labels(namespace, lad, bucket).set(agreement)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)
