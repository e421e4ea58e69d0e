"""The pure scrape evaluation: parsing, counter deltas (resets, new series), histogram_quantile, windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localattn_operator.providers.scrape_eval import (
    PodWindow,
    ScrapeParseError,
    ScrapeState,
    Snapshot,
    bucket_quantile,
    evaluate,
    increase,
    parse,
    rate,
    window_of,
)
from localattn_operator.queries import TEMPLATES

INF = math.inf


def exposition(requests: float, fast: float, tokens: float, errors: float = 0.0, perplexity: float = 10.0) -> str:
    return f"""# HELP vllm:e2e_request_latency_seconds e2e
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="0.5",model_name="m"}} {fast}
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="1.0",model_name="m"}} {requests}
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {requests}
vllm:e2e_request_latency_seconds_count{{engine="0",model_name="m"}} {requests}
vllm:e2e_request_latency_seconds_sum{{engine="0",model_name="m"}} {requests * 0.4}
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="m"}} {tokens}
# TYPE http_requests_total counter
http_requests_total{{handler="/v1/completions",method="POST",status="2xx"}} {requests - errors}
http_requests_total{{handler="/v1/completions",method="POST",status="5xx"}} {errors}
http_requests_total{{handler="/metrics",method="GET",status="2xx"}} 1000
# TYPE localattn_probe_perplexity gauge
localattn_probe_perplexity {perplexity}
"""


def pod(t0: float, t1: float, before: str, after: str, *middle: tuple[float, str]) -> PodWindow:
    start, end = parse(before, t0), parse(after, t1)
    within = (*tuple(parse(text, t) for t, text in middle), end)
    return PodWindow(start, end, within)


def test_parse_keeps_sample_names_and_labels() -> None:
    snap = parse(exposition(10, 4, 100), 1.0)
    assert snap.series("vllm:generation_tokens_total") == {frozenset({("engine", "0"), ("model_name", "m")}): 100.0}
    les = {dict(labels)["le"] for labels in snap.series("vllm:e2e_request_latency_seconds_bucket")}
    assert les == {"0.5", "1.0", "+Inf"}
    with pytest.raises(ScrapeParseError):
        parse("this is { not metrics", 0.0)


def test_counters_increase_rate_and_resets() -> None:
    normal = pod(0, 10, exposition(10, 4, 100), exposition(30, 14, 300))
    assert increase([normal], "vllm:generation_tokens_total") == 200
    assert rate([normal], "vllm:generation_tokens_total") == 20
    restarted = pod(0, 10, exposition(10, 4, 100), exposition(5, 1, 40))  # counters went down: a restart
    assert increase([restarted], "vllm:generation_tokens_total") == 40
    assert increase([normal, restarted], "vllm:generation_tokens_total") == 240
    assert increase([normal], "no_such_metric") is None


def test_a_series_new_in_the_window_counts_from_zero() -> None:
    before = exposition(10, 4, 100).replace('status="5xx"', 'status="4xx"')
    w = pod(0, 10, before, exposition(20, 8, 200, errors=3))
    assert evaluate("error_rate", [w]) == pytest.approx(3 / 10)


def test_evaluate_every_aggregate_template_on_two_pods() -> None:
    a = pod(100, 110, exposition(10, 4, 100, errors=0), exposition(30, 14, 300, errors=2, perplexity=12.0),
            (105, exposition(20, 9, 200, errors=1, perplexity=10.0)))
    b = pod(100, 105, exposition(0, 0, 0), exposition(10, 0, 50, perplexity=20.0))
    assert evaluate("requests", [a, b]) == 30
    # rates: a le 0.5 1/s, le 1.0 2/s; b le 0.5 0/s, le 1.0 2/s -> 1, 4, 4 cumulative; rank 3.8 in (0.5, 1.0]
    assert evaluate("p95_e2e", [a, b]) == pytest.approx(0.5 + 0.5 * (2.8 / 3))
    assert evaluate("error_rate", [a, b]) == pytest.approx(0.2 / (2 + 2))
    assert evaluate("tokens_per_pod_second", [a, b]) == pytest.approx((20 + 10) / 2)
    assert evaluate("probe_perplexity", [a, b]) == pytest.approx(((10 + 12) / 2 + 20) / 2)
    assert evaluate("p95_ttft", [a, b]) is None  # not exported: no data
    assert evaluate("bucket_requests", [a, b], "0-512") is None


def test_every_template_has_an_evaluation() -> None:
    w = pod(0, 10, exposition(1, 1, 1), exposition(2, 2, 2))
    for name in TEMPLATES:
        evaluate(name, [w], "0-512" if name.startswith("bucket_") else None)  # raises for an unknown one


def test_zero_traffic_is_no_data_not_zero() -> None:
    idle = pod(0, 10, exposition(10, 4, 100), exposition(10, 4, 100))
    assert evaluate("requests", [idle]) == 0
    assert evaluate("p95_e2e", [idle]) is None      # NaN in Prometheus
    assert evaluate("error_rate", [idle]) is None   # 0/0


def test_bucket_quantile_matches_prometheus_rules() -> None:
    assert bucket_quantile(0.95, {0.1: 2, 0.5: 6, 1.0: 9, 2.5: 10, INF: 10}) == pytest.approx(1.0 + 1.5 * 0.5)
    assert bucket_quantile(0.5, {1.0: 0, 2.0: 0, INF: 10}) == 2.0     # in the +Inf bucket: the highest bound
    assert bucket_quantile(0.5, {1.0: 10, INF: 10}) == pytest.approx(0.5)  # first bucket: from 0
    assert bucket_quantile(0.5, {1.0: 10, 2.0: 10}) is None           # no +Inf bucket: NaN
    assert bucket_quantile(0.5, {INF: 10}) is None                     # fewer than two buckets
    assert bucket_quantile(0.5, {1.0: 0, INF: 0}) is None             # no observations
    assert bucket_quantile(0.5, {1.0: 6, 2.0: 4, INF: 10}) == pytest.approx(1.0 * 5 / 6)  # made monotonic
    assert bucket_quantile(0.5, {-1.0: 10, INF: 10}) == -1.0
    assert bucket_quantile(1.5, {1.0: 1, INF: 1}) == INF


@given(st.lists(st.floats(0, 1000), min_size=2, max_size=8), st.floats(0, 1))
def test_bucket_quantile_lies_within_the_finite_bounds(counts: list[float], q: float) -> None:
    bounds = [0.1 * (i + 1) for i in range(len(counts) - 1)] + [INF]
    cumulative = dict(zip(bounds, [sum(counts[: i + 1]) for i in range(len(counts))], strict=True))
    value = bucket_quantile(q, cumulative)
    if cumulative[INF] == 0:
        assert value is None
    elif q == 0 and value is None:
        assert cumulative[bounds[0]] == 0  # 0/0 in an empty first bucket: NaN, as Prometheus
    else:
        assert value is not None and 0 <= value <= bounds[-2] + 1e-9


def test_window_of_picks_the_scrape_nearest_the_windows_start() -> None:
    snaps = [Snapshot(t, {}) for t in (0.0, 30.0, 55.0, 61.0, 90.0, 120.0)]
    w = window_of(snaps, 60)
    assert w is not None and (w.start.time, w.end.time) == (61.0, 120.0)
    assert [s.time for s in w.within] == [90.0, 120.0]
    assert window_of(snaps[-2:], 61) is None          # 30 s of history: under half of a 61 s window
    assert window_of(snaps[:1], 60) is None
    # A sampling gap: the only earlier snapshot is 100 s old, so a "30 s" rate would be over 100 s of traffic.
    assert window_of([Snapshot(0.0, {}), Snapshot(100.0, {})], 30) is None
    assert window_of([Snapshot(0.0, {}), Snapshot(44.0, {})], 30) is not None  # within 1.5x: measured as 44 s


def test_state_is_bounded_and_forgets_pods() -> None:
    state = ScrapeState()
    for t in range(100):
        state.record("http://127.1.1.2:8000/metrics", Snapshot(float(t), {}))
    state.record("http://127.1.1.3:8000/metrics", Snapshot(0.0, {}))
    assert len(state.history["http://127.1.1.2:8000/metrics"]) == 64
    state.record("http://127.1.1.2:8000/metrics", Snapshot(10_000.0, {}), keep_seconds=60)
    assert [s.time for s in state.history["http://127.1.1.2:8000/metrics"]] == [10_000.0]
    state.forget_except({"http://127.1.1.2:8000/metrics"})
    assert set(state.history) == {"http://127.1.1.2:8000/metrics"}


def test_the_autoscalers_load_gauges_are_averaged_per_pod_and_summed() -> None:
    """queries.LOAD_TEMPLATES as the scrape provider answers them: each pod's gauge over the window, summed over
    the arm's pods; a pod without the series is not counted as reporting (missing, not zero)."""
    def gauges(waiting: float, running: float, usage: float) -> str:
        return ("# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}\n'
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}\n'
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {usage}\n')

    a = PodWindow(parse(gauges(9, 9, 0.9), 0), parse(gauges(4, 2, 0.4), 20),
                  (parse(gauges(2, 2, 0.2), 10), parse(gauges(4, 2, 0.4), 20)))
    b = PodWindow(parse(gauges(0, 0, 0), 0), parse(gauges(1, 1, 0.1), 20), (parse(gauges(1, 1, 0.1), 20),))
    silent = PodWindow(parse(exposition(1, 1, 1), 0), parse(exposition(2, 2, 2), 20), (parse(exposition(2, 2, 2), 20),))
    assert evaluate("pods_reporting", [a, b, silent]) == 2
    assert evaluate("waiting_total", [a, b, silent]) == pytest.approx(3 + 1)  # the start scrape is outside (start, end]
    assert evaluate("running_total", [a, b]) == pytest.approx(2 + 1)
    assert evaluate("kv_usage_total", [a, b]) == pytest.approx(0.3 + 0.1)
    assert evaluate("pods_reporting", [silent]) is None and evaluate("waiting_total", [silent]) is None
