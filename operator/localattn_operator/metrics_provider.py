"""The metrics-provider interface (Flagger's `RunQuery`), and the pure collection of an arm's figures over it.

One small interface per axis: a provider answers one named query (`queries.TEMPLATES`) for one arm over one
window. The Prometheus provider renders the template (`promql`) and runs it; the scrape provider reads the
arm's pods' `/metrics` twice and evaluates the same names itself. Both live elsewhere (they do I/O); this
module only defines the contract and what is pure around it: collecting every figure of an arm (a failed
query is recorded as an error, never as a value) and falling back from one provider to the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from localattn_operator import queries
from localattn_operator.analysis import ArmFigures, Figures


class ProviderError(Exception):
    """The provider could not answer (unreachable, timeout, bad response): the gate is Error and the window
    Inconclusive (held), never Failed."""


class MetricsProvider(Protocol):
    """Answers `template_name` for the arm `params` names (namespace, lad, revision; bucket for bucket_*).

    Returns the value, None when there is no data (no series, NaN: missing data), raises ProviderError when it
    cannot tell. Implementations must bound their own time (every query has a timeout).
    """

    name: str

    def query(self, template_name: str, params: Mapping[str, str], window_seconds: float) -> float | None: ...


def promql(template_name: str, params: Mapping[str, str], window_seconds: float) -> str:
    """The PromQL a Prometheus provider runs for a query (what the docs and the dashboard show)."""
    rendered = {"sel": queries.arm_selector(params["namespace"], params["lad"], params["revision"]),
                "window": queries.window(window_seconds)}
    if "bucket" in params:
        rendered["bucket"] = params["bucket"]
    extra = set(params) - {"namespace", "lad", "revision", "bucket"}
    if extra:
        raise queries.QueryError(f"unexpected query parameters {sorted(extra)}")
    return queries.render(template_name, rendered)


@dataclass(frozen=True)
class FirstAvailable:
    """Try providers in order; the next one answers when one raises ProviderError (Prometheus, then scraping)."""

    providers: Sequence[MetricsProvider]
    name: str = "first-available"

    def query(self, template_name: str, params: Mapping[str, str], window_seconds: float) -> float | None:
        errors = []
        for provider in self.providers:
            try:
                return provider.query(template_name, params, window_seconds)
            except ProviderError as exc:
                errors.append(f"{provider.name}: {exc}")
        raise ProviderError("; ".join(errors) or "no metrics provider configured")


@dataclass(frozen=True)
class ArmRef:
    namespace: str
    lad: str
    revision: str

    def params(self, bucket: str | None = None) -> dict[str, str]:
        out = {"namespace": self.namespace, "lad": self.lad, "revision": self.revision}
        if bucket is not None:
            out["bucket"] = bucket
        return out


_ARM_FIELDS = {"requests": "requests", "p95_e2e": "p95_e2e", "p95_ttft": "p95_ttft", "p95_itl": "p95_itl",
               "error_rate": "error_rate", "tokens_per_pod_second": "tokens_per_gpu_second",
               "probe_perplexity": "probe_perplexity", "probe_exact_match": "probe_exact_match"}
_BUCKET_FIELDS = {"bucket_requests": "requests", "bucket_p95_e2e": "p95_e2e",
                  "bucket_probe_perplexity": "probe_perplexity", "bucket_probe_exact_match": "probe_exact_match"}


def cost_per_million(tokens_per_gpu_second: float | None, gpu_hour_price: float | None) -> float | None:
    if tokens_per_gpu_second is None or gpu_hour_price is None or tokens_per_gpu_second <= 0:
        return None
    return gpu_hour_price / 3600 / tokens_per_gpu_second * 1e6


def collect_arm(
    provider: MetricsProvider, arm: ArmRef, window_seconds: float, buckets: Sequence[str],
    gpus_per_pod: float = 1.0, gpu_hour_price: float | None = None,
) -> ArmFigures:
    """Every figure of one arm over one window; each failed query is kept in `errors` under its figure name."""
    errors: dict[str, str] = {}

    def ask(name: str, figure: str, bucket: str | None = None) -> float | None:
        try:
            value = provider.query(name, arm.params(bucket), window_seconds)
        except ProviderError as exc:
            errors[figure if bucket is None else f"{bucket}/{figure}"] = str(exc)
            return None
        return None if value is None or value != value else float(value)  # NaN (0/0, empty histogram) is no data

    total = {figure: ask(name, figure) for name, figure in _ARM_FIELDS.items()}
    per_pod = total["tokens_per_gpu_second"]
    total["tokens_per_gpu_second"] = per_pod / gpus_per_pod if per_pod is not None and gpus_per_pod > 0 else None
    figures = Figures(**total, cost_per_million=cost_per_million(total["tokens_per_gpu_second"], gpu_hour_price))
    per_bucket = {b: Figures(**{figure: ask(name, figure, b) for name, figure in _BUCKET_FIELDS.items()})
                  for b in buckets}
    return ArmFigures(arm.revision, figures, per_bucket, errors)
