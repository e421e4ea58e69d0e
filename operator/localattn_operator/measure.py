"""Measure one analysis window (`rollout_types.analysis_due`) through a metrics provider -> a verdict.

Runs outside the LAD's lock and off the API threads (the reconciler gives it its own executor): a slow
Prometheus never holds a reconcile. The verdict is fed to the next pass, which uses it only if it answers the
request that pass finds due (`rollout.step` checks). Nothing here must survive a restart: the window's times
are in `status.rollout`, and a restarted operator measures the same window again (Prometheus evaluates at the
window's end).

Without a provider (none in the spec, no `LOCALATTN_PROMETHEUS_URL`) every figure is missing data, which the
spec's `missingData` judges (inconclusive: hold; never promote blindly). The scrape provider reads the arms'
pods, whose addresses the pass found (`scrape`, built by the reconciler over the LAD's `ScrapeState`, sampled
when a window starts). The paired comparison is not wired yet (an Error: held, never failed).
"""

from __future__ import annotations

from typing import cast

from localattn_operator import analysis, queries
from localattn_operator.analysis import AnalysisRequest, ArmFigures, Verdict, Window
from localattn_operator.metrics_provider import (
    ArmRef,
    FirstAvailable,
    MetricsProvider,
    ProviderError,
    collect_arm,
)
from localattn_operator.models import LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.providers.prometheus import PrometheusProvider
from localattn_operator.quantity import quantity_to_bytes


class _Unwired:
    """A configured provider the executor cannot run yet: every query is an Error (held, not failed)."""

    def __init__(self, name: str, why: str):
        self.name, self._why = name, why

    def query(self, template_name: str, params: object, window_seconds: float) -> float | None:
        raise ProviderError(self._why)


def provider_for(spec: LocalAttnDeploymentSpec, request: AnalysisRequest, prometheus_url: str | None,
                 scrape: MetricsProvider | None = None) -> MetricsProvider | None:
    """The spec's provider(s) for this window (Prometheus first, then scraping); None: nothing configured."""
    chosen = spec.analysis.provider
    providers: list[MetricsProvider] = []
    url = (chosen.prometheus.url if chosen.prometheus is not None else None) or prometheus_url
    if url and (chosen.prometheus is not None or chosen.scrape is None):
        providers.append(PrometheusProvider(url).for_window(request.end))
    if chosen.scrape is not None:
        providers.append(scrape if scrape is not None else _Unwired("scrape", "no pod of the arms to scrape"))
    if not providers:
        return None
    return providers[0] if len(providers) == 1 else cast(MetricsProvider, FirstAvailable(providers))


def gpus_per_pod(spec: LocalAttnDeploymentSpec) -> float:
    limit = spec.runtime.resources.limits.get("nvidia.com/gpu")
    try:
        return float(quantity_to_bytes(str(limit))) if limit is not None else 1.0
    except ValueError:
        return 1.0


def _arm(provider: MetricsProvider | None, spec: LocalAttnDeploymentSpec, namespace: str, name: str,
         revision: str, request: AnalysisRequest) -> ArmFigures:
    if provider is None:
        return ArmFigures(revision)
    boundaries = queries.spec_bucket_boundaries(spec.analysis.length_buckets, spec.local_attention.window_size)
    price = spec.cost.gpu_hour_price if spec.cost is not None else None
    return collect_arm(provider, ArmRef(namespace, name, revision), request.seconds,
                       queries.bucket_labels(boundaries), gpus_per_pod(spec), price)


def measure(request: AnalysisRequest, spec: LocalAttnDeploymentSpec, rollout: RolloutStatus, namespace: str,
            name: str, prometheus_url: str | None, scrape: MetricsProvider | None = None) -> Verdict:
    provider = provider_for(spec, request, prometheus_url, scrape)
    stable = _arm(provider, spec, namespace, name, request.stable_revision, request)
    if request.kind == "guard":
        baseline = analysis.arm_from_status(rollout.baseline) if rollout.baseline is not None \
            else ArmFigures(rollout.previous_revision or "")
        return analysis.assess_guard(Window(request, baseline, stable), spec.analysis)
    canary = _arm(provider, spec, namespace, name, request.canary_revision or "", request)
    paired_error = "the paired comparison is not wired into the operator yet" if spec.paired_comparison.enabled else None
    return analysis.assess(Window(request, stable, canary, paired_error=paired_error), spec.analysis,
                           probe=spec.probe.enabled, paired=spec.paired_comparison.enabled)
