"""The named measurements evaluated from two scrapes of each pod's `/metrics` (pure: text and times in).

What the scrape provider needs to answer the same names as Prometheus without one: parse the text exposition,
keep a short history of snapshots per pod (in a `ScrapeState` the caller owns, so it outlives one reconcile
pass), pick the snapshot nearest the window's start, and evaluate each template's meaning over the deltas:

- counters: `increase` is end minus start, a decrease is a reset (the pod restarted: the end value is the
  increase, as Prometheus counts it); `rate` is the increase over the time between the two scrapes.
- histograms: bucket increases summed over the arm's pods by `le`, then `histogram_quantile` exactly as
  Prometheus interpolates (linear within the bucket, the lower bound of +Inf's bucket is the answer there).
- gauges (`avg_over_time`, `min_over_time`): over the pod's snapshots inside the window.

Series are not selected by target labels here: the caller passes the arm's pods, which *is* the selector.
Prometheus' `rate` extrapolates to the window's edges; here the window is exactly the two scrapes, so the two
providers agree within the drift of counters between a scrape and the window's edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from localattn_operator import queries

Labels = frozenset[tuple[str, str]]
SeriesKey = tuple[str, Labels]
LabelFilter = Callable[[Mapping[str, str]], bool]
MAX_SNAPSHOTS_PER_POD = 64


class ScrapeParseError(ValueError):
    """The body is not the Prometheus text exposition format."""


@dataclass(frozen=True)
class Snapshot:
    """All samples of one scrape of one pod, at `time` (seconds since the epoch, the scraper's clock)."""

    time: float
    values: Mapping[SeriesKey, float]

    def series(self, name: str, match: LabelFilter | None = None) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.values.items()
                if n == name and (match is None or match(dict(labels)))}


def parse(text: str, time: float) -> Snapshot:
    """A snapshot of one `/metrics` body (samples by name as exposed: `..._bucket`, `..._total`)."""
    values: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ScrapeParseError(f"not the Prometheus text format: {exc}") from exc
    return Snapshot(time, values)


@dataclass
class ScrapeState:
    """Snapshots per pod (by metrics URL), oldest first; owned by the caller across reconcile passes."""

    history: dict[str, list[Snapshot]] = field(default_factory=dict)

    def record(self, pod: str, snapshot: Snapshot, keep_seconds: float = 7200.0) -> None:
        snaps = [s for s in self.history.get(pod, []) if s.time >= snapshot.time - keep_seconds]
        snaps.append(snapshot)
        self.history[pod] = snaps[-MAX_SNAPSHOTS_PER_POD:]

    def forget_except(self, pods: set[str]) -> None:
        """Drop pods no longer in any arm (bounded memory over a long-running operator)."""
        for pod in set(self.history) - pods:
            del self.history[pod]


@dataclass(frozen=True)
class PodWindow:
    """One pod over one window: the scrapes at its start and end, and every scrape in (start, end]."""

    start: Snapshot
    end: Snapshot
    within: tuple[Snapshot, ...]

    @property
    def seconds(self) -> float:
        return self.end.time - self.start.time


def window_of(snapshots: Sequence[Snapshot], seconds: float, min_fraction: float = 0.5) -> PodWindow | None:
    """The window ending at the newest snapshot and starting at the one nearest `seconds` before it.

    None when no earlier snapshot spans between `min_fraction` and `2 - min_fraction` of the window: a rate
    over a much shorter span, or over a much longer one (traffic from before the canary started, after a gap
    in sampling), would be measured on other traffic than the verdict is about."""
    if len(snapshots) < 2:
        return None
    end = snapshots[-1]
    target = end.time - seconds
    shortest, longest = max(min_fraction * seconds, 1e-3), (2 - min_fraction) * seconds
    earlier = [s for s in snapshots[:-1] if shortest <= end.time - s.time <= longest]
    if not earlier:
        return None
    start = min(earlier, key=lambda s: abs(s.time - target))
    return PodWindow(start, end, tuple(s for s in snapshots if start.time < s.time <= end.time))


# --- PromQL functions over pod windows ----------------------------------------------------------------------


def _increases(pod: PodWindow, name: str, match: LabelFilter | None) -> dict[Labels, float]:
    before = pod.start.series(name, match)
    out = {}
    for labels, value in pod.end.series(name, match).items():
        old = before.get(labels)
        out[labels] = value if old is None or value < old else value - old  # absent or reset: counted from 0
    return out


def increase(pods: Sequence[PodWindow], name: str, match: LabelFilter | None = None) -> float | None:
    """`sum(increase(name{match}[w]))`; None when no pod has the series (an empty vector)."""
    values = [v for pod in pods for v in _increases(pod, name, match).values()]
    return sum(values) if values else None


def rate(pods: Sequence[PodWindow], name: str, match: LabelFilter | None = None) -> float | None:
    """`sum(rate(name{match}[w]))`: each pod's increase over its own scrape interval."""
    values = [v / pod.seconds for pod in pods if pod.seconds > 0
              for v in _increases(pod, name, match).values()]
    return sum(values) if values else None


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative counts by upper bound (`le`); None where it gives NaN."""
    if not buckets or math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if not math.isinf(bounds[-1]) or len(bounds) < 2:
        return None
    counts, highest = [], -math.inf
    for bound in bounds:  # ensureMonotonic: a bucket never holds fewer than the one below it
        highest = max(highest, buckets[bound])
        counts.append(highest)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = (0.0, counts[0]) if b == 0 else (bounds[b - 1], counts[b] - counts[b - 1])
    if b > 0:
        rank -= counts[b - 1]
    if count <= 0:
        return None  # q = 0 over an empty first bucket: 0/0, NaN in Prometheus
    return start + (bounds[b] - start) * (rank / count)


def histogram_p95(pods: Sequence[PodWindow], metric: str, match: LabelFilter | None = None) -> float | None:
    """`histogram_quantile(0.95, sum by (le) (rate(metric_bucket{match}[w])))` (increases: same ratios)."""
    by_le: dict[float, float] = {}
    for pod in pods:
        for labels, value in _increases(pod, f"{metric}_bucket", match).items():
            le = dict(labels).get("le")
            if le is not None:
                by_le[float(le)] = by_le.get(float(le), 0.0) + value / max(pod.seconds, 1e-9)
    return bucket_quantile(0.95, by_le)


def _over_time(pods: Sequence[PodWindow], name: str, match: LabelFilter,
               per_series: Callable[[list[float]], float]) -> list[float]:
    out: list[float] = []
    for pod in pods:
        samples: dict[Labels, list[float]] = {}
        for snap in pod.within:
            for labels, value in snap.series(name, match).items():
                if not math.isnan(value):
                    samples.setdefault(labels, []).append(value)
        out.extend(per_series(v) for v in samples.values() if v)
    return out


def _bucket_is(value: str) -> LabelFilter:
    return lambda labels: labels.get(queries.BUCKET_LABEL, "") == value


def _api_requests(errors_only: bool) -> LabelFilter:
    def match(labels: Mapping[str, str]) -> bool:
        handler = labels.get("handler", "")
        ok = handler.startswith("/v1/") and len(handler) > len("/v1/")
        return ok and (not errors_only or labels.get("status") != "2xx")
    return match


def _ratio(num: float | None, den: float | None) -> float | None:
    if den is None or den == 0:
        return None  # 0/0 is NaN in Prometheus: no data
    return (num or 0.0) / den


def _avg(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


_LOAD_GAUGES = {"pods_reporting": "vllm:kv_cache_usage_perc", "waiting_total": "vllm:num_requests_waiting",
                "running_total": "vllm:num_requests_running", "kv_usage_total": "vllm:kv_cache_usage_perc"}


def evaluate(name: str, pods: Sequence[PodWindow], bucket: str | None = None) -> float | None:
    """The value `queries.TEMPLATES[name]` has over these pod windows (the arm); None: no data."""
    if name not in queries.TEMPLATES:
        raise queries.QueryError(f"unknown query template {name!r}")
    if name.startswith("bucket_") != (bucket is not None):
        raise queries.QueryError(f"template {name!r}: bucket given {bucket is not None}")
    in_bucket = _bucket_is(bucket or "")
    latency = queries.BUCKET_LATENCY_METRIC
    if name == "requests":
        return increase(pods, "vllm:e2e_request_latency_seconds_count")
    if name == "bucket_requests":
        return increase(pods, f"{latency}_count", in_bucket)
    if name in ("p95_e2e", "p95_ttft", "p95_itl"):
        metric = {"p95_e2e": "vllm:e2e_request_latency_seconds", "p95_ttft": "vllm:time_to_first_token_seconds",
                  "p95_itl": "vllm:inter_token_latency_seconds"}[name]
        return histogram_p95(pods, metric)
    if name == "bucket_p95_e2e":
        return histogram_p95(pods, latency, in_bucket)
    if name == "error_rate":
        return _ratio(rate(pods, "http_requests_total", _api_requests(True)),
                      rate(pods, "http_requests_total", _api_requests(False)))
    if name == "tokens_per_pod_second":
        serving = [p for p in pods if p.end.series("vllm:generation_tokens_total")]
        total = rate(serving, "vllm:generation_tokens_total")
        return None if total is None or not serving else total / len(serving)
    gauges = {"probe_perplexity": queries.PROBE_PERPLEXITY_METRIC, "probe_exact_match": queries.PROBE_EXACT_MATCH_METRIC,
              "bucket_probe_perplexity": queries.PROBE_PERPLEXITY_METRIC,
              "bucket_probe_exact_match": queries.PROBE_EXACT_MATCH_METRIC}
    if name in gauges:
        return _avg(_over_time(pods, gauges[name], in_bucket, lambda v: sum(v) / len(v)))
    if name in _LOAD_GAUGES:  # the autoscaler's: each pod's series averaged over the window, summed (or counted)
        averages = _over_time(pods, _LOAD_GAUGES[name], lambda _: True, lambda v: sum(v) / len(v))
        if name == "pods_reporting":
            reporting = [p for p in pods if _over_time([p], _LOAD_GAUGES[name], lambda _: True, len)]
            return float(len(reporting)) if reporting else None
        return sum(averages) if averages else None
    if name == "probe_age":
        ages = _over_time(pods, queries.PROBE_AGE_METRIC, lambda _: True, min)
        return max(ages) if ages else None
    raise queries.QueryError(f"template {name!r} has no scrape evaluation")  # a new template needs one here
