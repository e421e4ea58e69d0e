"""The PromQL behind every analysis figure, as named templates rendered strictly (pure).

Queries are data (Flagger's observers): each figure is one template over the arm's selector, so the docs, the
Grafana dashboard and the operator use the same text. `render` fails on a missing *or an unexpected* key, so a
typo can never produce an empty or unselective query. Arms are selected by the target labels the scrape
configuration gives every serving pod (`namespace`, `lad`, `revision`; `track` is informative only, since a
revision keeps its identity when it is promoted).

Metric names are those the installed vLLM (0.32, `vllm/v1/metrics/loggers.py`) and the runtime
(`localattn_runtime/metrics.py`) export. Errors are the non-2xx share of vLLM's HTTP API requests
(prometheus-fastapi-instrumentator's `http_requests_total`, `status` grouped as 2xx/4xx/5xx).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from string import Template

import localattn_contract as contract

# The runtime's per-length-bucket latency histogram and its label (see `bucket_labels` for the values): one
# spelling, the contract's, which the runtime's histogram uses too.
BUCKET_LATENCY_METRIC = contract.BUCKET_LATENCY_METRIC
BUCKET_LABEL = contract.BUCKET_LABEL
PROBE_PERPLEXITY_METRIC = "localattn_probe_perplexity"
PROBE_EXACT_MATCH_METRIC = "localattn_probe_exact_match"
PROBE_AGE_METRIC = "localattn_probe_age_seconds"

# $sel: the arm's label matchers (without braces); $window: a Prometheus duration ("60s"); $bucket: a bucket
# label value. Aggregation is over all of the arm's pods and engines.
TEMPLATES: dict[str, str] = {
    "requests": "sum(increase(vllm:e2e_request_latency_seconds_count{$sel}[$window]))",
    "p95_e2e": "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{$sel}[$window])))",
    "p95_ttft": "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{$sel}[$window])))",
    "p95_itl": "histogram_quantile(0.95, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{$sel}[$window])))",
    "error_rate": (
        # `or vector(0)`: an arm that never failed has no non-2xx series at all, and an empty numerator would make
        # the share "no data" instead of 0; an arm with no requests still divides by nothing: no data.
        '(sum(rate(http_requests_total{$sel,handler=~"/v1/.+",status!="2xx"}[$window])) or vector(0))'
        ' / sum(rate(http_requests_total{$sel,handler=~"/v1/.+"}[$window]))'
    ),
    # Generated tokens per second per serving pod; the analysis divides by the GPUs per pod.
    "tokens_per_pod_second": (
        "sum(rate(vllm:generation_tokens_total{$sel}[$window]))"
        " / count(count by (pod) (vllm:generation_tokens_total{$sel}))"
    ),
    "probe_perplexity": f'avg(avg_over_time({PROBE_PERPLEXITY_METRIC}{{$sel,{BUCKET_LABEL}=""}}[$window]))',
    "probe_exact_match": f'avg(avg_over_time({PROBE_EXACT_MATCH_METRIC}{{$sel,{BUCKET_LABEL}=""}}[$window]))',
    "probe_age": f"max(min_over_time({PROBE_AGE_METRIC}{{$sel}}[$window]))",
    "bucket_requests": f'sum(increase({BUCKET_LATENCY_METRIC}_count{{$sel,{BUCKET_LABEL}="$bucket"}}[$window]))',
    "bucket_p95_e2e": (
        f"histogram_quantile(0.95, sum by (le) (rate({BUCKET_LATENCY_METRIC}_bucket"
        f'{{$sel,{BUCKET_LABEL}="$bucket"}}[$window])))'
    ),
    "bucket_probe_perplexity": (
        f'avg(avg_over_time({PROBE_PERPLEXITY_METRIC}{{$sel,{BUCKET_LABEL}="$bucket"}}[$window]))'
    ),
    "bucket_probe_exact_match": (
        f'avg(avg_over_time({PROBE_EXACT_MATCH_METRIC}{{$sel,{BUCKET_LABEL}="$bucket"}}[$window]))'
    ),
}
# The autoscaler's load signals per arm (docs/autoscaling.md): vLLM's gauges smoothed over $window and summed
# over the arm's pods (`autoscaling_signals.samples_from_totals` turns them back into per-pod samples); its
# latency targets use p95_e2e and p95_ttft above.
LOAD_TEMPLATES: dict[str, str] = {
    "pods_reporting": "count(avg_over_time(vllm:kv_cache_usage_perc{$sel}[$window]))",
    "waiting_total": "sum(avg_over_time(vllm:num_requests_waiting{$sel}[$window]))",
    "running_total": "sum(avg_over_time(vllm:num_requests_running{$sel}[$window]))",
    "kv_usage_total": "sum(avg_over_time(vllm:kv_cache_usage_perc{$sel}[$window]))",
}
TEMPLATES.update(LOAD_TEMPLATES)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_WINDOW = re.compile(r"^[0-9]+[smh]$")


class QueryError(ValueError):
    """A template was rendered with a missing, unexpected or malformed parameter."""


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(labels: Mapping[str, str]) -> str:
    """Label matchers for an arm, e.g. `namespace="ns",lad="llm",revision="4ab29fa9c5"` (sorted, escaped)."""
    if not labels:
        raise QueryError("an arm selector needs at least one label")
    for name in labels:
        if not _LABEL_NAME.match(name):
            raise QueryError(f"{name!r} is not a Prometheus label name")
    return ",".join(f'{name}="{_quote(value)}"' for name, value in sorted(labels.items()))


def arm_selector(namespace: str, lad: str, revision: str) -> str:
    return selector({"namespace": namespace, "lad": lad, "revision": revision})


def window(seconds: float) -> str:
    """A Prometheus range for a window of `seconds` (whole seconds, at least 1)."""
    return f"{max(1, round(seconds))}s"


def placeholders(name: str) -> set[str]:
    template = Template(TEMPLATES[name])
    return {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)
            if m.group("named") or m.group("braced")}


def render(name: str, params: Mapping[str, str]) -> str:
    """Render template `name`; every placeholder must be given and nothing else."""
    if name not in TEMPLATES:
        raise QueryError(f"unknown query template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    wanted = placeholders(name)
    missing, extra = wanted - set(params), set(params) - wanted
    if missing or extra:
        raise QueryError(f"template {name!r}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if "window" in params and not _WINDOW.match(params["window"]):
        raise QueryError(f"template {name!r}: window must be like 60s, got {params['window']!r}")
    values = dict(params)
    if "bucket" in values:
        values["bucket"] = _quote(values["bucket"])
    return Template(TEMPLATES[name]).substitute(values)


# The bucket edges and labels are the contract's (the runtime labels its histogram with the same strings).
default_bucket_boundaries = contract.default_bucket_boundaries
bucket_labels = contract.bucket_labels
bucket_of = contract.bucket_of


def spec_bucket_boundaries(length_buckets: Sequence[int] | None, window_size: int) -> list[int]:
    """`spec.analysis.lengthBuckets`, or the default derived from `spec.localAttention.windowSize`."""
    return list(length_buckets) if length_buckets else default_bucket_boundaries(window_size)

