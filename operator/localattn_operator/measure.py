"""Measure one analysis window (`rollout_types.analysis_due`) through a metrics provider -> a verdict.

Runs outside the LAD's lock and off the API threads (the reconciler gives it its own executor): a slow
Prometheus never holds a reconcile. The verdict is fed to the next pass, which uses it only if it answers the
request that pass finds due (`rollout.step` checks). Nothing here must survive a restart: the window's times
are in `status.rollout`, and a restarted operator measures the same window again (Prometheus evaluates at the
window's end).

Without a provider (none in the spec, no `LOCALATTN_PROMETHEUS_URL`) every figure is missing data, which the
spec's `missingData` judges (inconclusive: hold; never promote blindly). The scrape provider reads the arms'
pods, whose addresses the pass found (`scrape`, built by the reconciler over the LAD's `ScrapeState`, sampled
when a window starts). The paired comparison (`PairedRequest`: the prompts and one ready pod per arm, found
by the pass) sends each prompt, greedy, to both pods here; any failure is a provider error (held, never failed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from localattn_operator import analysis, queries
from localattn_operator.analysis import AnalysisRequest, ArmFigures, Verdict, Window
from localattn_operator.autoscaling_signals import ArmTotals, Samples, samples_from_totals
from localattn_operator.metrics_provider import (
    ArmRef,
    FirstAvailable,
    MetricsProvider,
    ProviderError,
    collect_arm,
)
from localattn_operator.models import LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.paired import Completion, Pair, summarise
from localattn_operator.providers import completions
from localattn_operator.providers.prometheus import PrometheusProvider
from localattn_operator.quantity import quantity_to_bytes


@dataclass(frozen=True)
class PairedRequest:
    """What the paired comparison of one window needs, found by the pass (under the lock): the prompts, one
    ready pod of each arm (`http://ip:port`), the served model name; or why there is nothing to compare."""

    prompts: Sequence[str] = ()
    stable_url: str = ""
    canary_url: str = ""
    model: str | None = None
    max_tokens: int = 32
    error: str | None = None
    complete: Callable[[str, str | None, str, int], tuple[int, Completion]] = field(
        default=completions.greedy, compare=False)


def run_paired(request: PairedRequest, boundaries: Sequence[int]) -> tuple[tuple[analysis.PairedFigures, ...],
                                                                         str | None]:
    """(figures per length bucket, error): every prompt to both pods; the first failure makes the comparison an
    Error (a partial set would judge the canary on the prompts that happened to answer)."""
    if request.error is not None:
        return (), request.error
    pairs = []
    try:
        for prompt in request.prompts:
            length, stable = request.complete(request.stable_url, request.model, prompt, request.max_tokens)
            _, canary = request.complete(request.canary_url, request.model, prompt, request.max_tokens)
            pairs.append(Pair(length, stable, canary))
    except ProviderError as exc:
        return (), str(exc)
    return summarise(pairs, boundaries), None


class _Unwired:
    """A configured provider the executor cannot run yet: every query is a provider error (held, not failed)."""

    def __init__(self, name: str, why: str):
        self.name, self._why = name, why

    def query(self, template_name: str, params: object, window_seconds: float) -> float | None:
        raise ProviderError(self._why)


def provider_for(spec: LocalAttnDeploymentSpec, request: AnalysisRequest | None, prometheus_url: str | None,
                 scrape: MetricsProvider | None = None) -> MetricsProvider | None:
    """The spec's provider(s) for this window (Prometheus first, then scraping); None: nothing configured.
    Without a request (the autoscaler's load), Prometheus answers for now."""
    chosen = spec.analysis.provider
    providers: list[MetricsProvider] = []
    url = (chosen.prometheus.url if chosen.prometheus is not None else None) or prometheus_url
    if url and (chosen.prometheus is not None or chosen.scrape is None):
        prometheus = PrometheusProvider(url)
        providers.append(prometheus.for_window(request.end) if request is not None else prometheus)
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
            name: str, prometheus_url: str | None, scrape: MetricsProvider | None = None,
            paired: PairedRequest | None = None) -> Verdict:
    provider = provider_for(spec, request, prometheus_url, scrape)
    stable = _arm(provider, spec, namespace, name, request.stable_revision, request)
    if request.kind == "guard":
        baseline = analysis.arm_from_status(rollout.baseline) if rollout.baseline is not None \
            else ArmFigures(rollout.previous_revision or "")
        return analysis.assess_guard(Window(request, baseline, stable), spec.analysis)
    canary = _arm(provider, spec, namespace, name, request.canary_revision or "", request)
    figures: tuple[analysis.PairedFigures, ...] = ()
    paired_error = None
    if spec.paired_comparison.enabled:
        boundaries = queries.spec_bucket_boundaries(spec.analysis.length_buckets, spec.local_attention.window_size)
        figures, paired_error = run_paired(paired or PairedRequest(error="no paired request for this window"),
                                           boundaries)
    return analysis.assess(Window(request, stable, canary, paired=figures, paired_error=paired_error),
                           spec.analysis, probe=spec.probe.enabled, paired=spec.paired_comparison.enabled)


def measure_load(spec: LocalAttnDeploymentSpec, namespace: str, name: str, ready_by_revision: Mapping[str, int],
                 window_seconds: float, prometheus_url: str | None,
                 scrape: MetricsProvider | None = None) -> Samples:
    """The autoscaler's load signals now, per arm (`ready_by_revision`: the ready pods of each arm), through the
    analysis' providers; off the lock like `measure`. A query that fails or finds nothing is missing data
    (None), which the decision holds on: never zero load."""
    provider = provider_for(spec, None, prometheus_url, scrape)
    targets = spec.autoscaling.targets if spec.autoscaling is not None else None

    def ask(template: str, revision: str) -> float | None:
        if provider is None:
            return None
        try:
            value = provider.query(template, ArmRef(namespace, name, revision).params(), window_seconds)
        except ProviderError:
            return None
        return None if value is None or value != value else float(value)

    arms = []
    for revision, ready in sorted(ready_by_revision.items()):
        if ready <= 0:
            continue
        totals = {t: ask(t, revision) for t in queries.LOAD_TEMPLATES}
        p95 = ask("p95_e2e", revision) if targets is not None and targets.p95_latency_seconds is not None else None
        ttft = ask("p95_ttft", revision) if targets is not None and targets.p95_ttft_seconds is not None else None
        arms.append(ArmTotals(ready, totals["pods_reporting"], totals["waiting_total"], totals["running_total"],
                              totals["kv_usage_total"], p95, ttft))
    return samples_from_totals(arms)
