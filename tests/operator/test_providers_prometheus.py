"""The Prometheus and scrape providers against a REAL Prometheus scraping pods that serve vLLM-like metrics.

Each fake pod is an HTTP server whose counters grow linearly in time (`slope x seconds since start`), so
every rate, increase and p95 has an exact value computed by hand below from the slopes served, not from the
providers. Prometheus (the Debian binary) scrapes them every second with the target labels the dev cluster's
file-SD gives (namespace, pod, node, lad, revision, track).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from localattn_dev.procs import stop_child
from localattn_operator.metrics_provider import ArmRef, FirstAvailable, ProviderError, collect_arm
from localattn_operator.providers.prometheus import PrometheusProvider
from localattn_operator.providers.scrape import ScrapeProvider, ScrapeTarget
from localattn_operator.providers.scrape_eval import ScrapeState

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NS, LAD, STABLE, CANARY = "team-a", "llm", "aaaa111111", "bbbb222222"
WINDOW = 5.0
E2E_LE = ("0.1", "0.5", "1.0", "2.5", "+Inf")
TTFT_LE = ("0.05", "0.1", "0.2", "+Inf")
ITL_LE = ("0.01", "0.02", "0.05", "+Inf")
BUCKET_LE = ("0.5", "1.0", "+Inf")


@dataclass
class FakePod:
    """Per-second slopes of every counter (cumulative per `le` for histograms) and the gauges' values."""

    name: str
    revision: str
    track: str
    e2e: tuple[float, ...]
    ttft: tuple[float, ...]
    itl: tuple[float, ...]
    ok: float
    errors: float
    tokens: float
    perplexity: float
    exact_match: float
    buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    bucket_perplexity: dict[str, float] = field(default_factory=dict)

    def exposition(self, t: float) -> str:
        lines: list[str] = []
        base = 'model_name="tiny",engine="0"'

        def histogram(name: str, les: tuple[str, ...], slopes: tuple[float, ...], extra: str = base) -> None:
            if f"# TYPE {name} histogram" not in lines:
                lines.append(f"# TYPE {name} histogram")
            for le, slope in zip(les, slopes, strict=True):
                lines.append(f'{name}_bucket{{{extra},le="{le}"}} {slope * t}')
            lines.append(f"{name}_count{{{extra}}} {slopes[-1] * t}")
            lines.append(f"{name}_sum{{{extra}}} {0.5 * slopes[-1] * t}")

        histogram("vllm:e2e_request_latency_seconds", E2E_LE, self.e2e)
        histogram("vllm:time_to_first_token_seconds", TTFT_LE, self.ttft)
        histogram("vllm:inter_token_latency_seconds", ITL_LE, self.itl)
        lines.append("# TYPE vllm:generation_tokens_total counter")
        lines.append(f"vllm:generation_tokens_total{{{base}}} {self.tokens * t}")
        lines.append("# TYPE http_requests_total counter")
        # As vLLM's instrumentator does, a status series exists only once a request ended with it: a pod without
        # errors has no non-2xx /v1/ series at all.
        for handler, status, slope in (("/v1/completions", "2xx", self.ok), ("/v1/completions", "5xx", self.errors),
                                       ("/metrics", "2xx", 3.0), ("/health", "5xx", 2.0)):
            if slope == 0:
                continue
            lines.append(f'http_requests_total{{handler="{handler}",method="POST",status="{status}"}} {slope * t}')
        lines.append("# TYPE localattn_probe_perplexity gauge")
        lines.append(f"localattn_probe_perplexity {self.perplexity}")
        for bucket, value in self.bucket_perplexity.items():
            lines.append(f'localattn_probe_perplexity{{length_bucket="{bucket}"}} {value}')
        lines.append("# TYPE localattn_probe_exact_match gauge")
        lines.append(f"localattn_probe_exact_match {self.exact_match}")
        for bucket, slopes in self.buckets.items():
            histogram("localattn_request_latency_seconds", BUCKET_LE, slopes, f'length_bucket="{bucket}"')
        return "\n".join(lines) + "\n"


PODS = [
    FakePod("llm-stable-a", STABLE, "stable", e2e=(2, 6, 9, 10, 10), ttft=(10, 18, 20, 20), itl=(50, 90, 100, 100),
            ok=9, errors=1, tokens=100, perplexity=12.5, exact_match=0.9,
            buckets={"0-512": (4, 8, 8), "512-2048": (0, 2, 2)}, bucket_perplexity={"0-512": 11.0}),
    FakePod("llm-stable-b", STABLE, "stable", e2e=(1, 1, 2, 4, 4), ttft=(10, 18, 20, 20), itl=(50, 90, 100, 100),
            ok=4, errors=0, tokens=50, perplexity=13.5, exact_match=0.8,
            buckets={"0-512": (2, 2, 2), "512-2048": (0, 0, 0)}, bucket_perplexity={"0-512": 12.0}),
    FakePod("llm-canary-c", CANARY, "canary", e2e=(5, 9, 10, 10, 10), ttft=(10, 18, 20, 20), itl=(0, 50, 100, 100),
            ok=10, errors=0, tokens=120, perplexity=20.0, exact_match=0.5),
]

# Hand-computed from the slopes above (histogram_quantile: rank = 0.95 x total; linear in the bucket found).
STABLE_EXPECTED = {
    "requests": 14 * WINDOW,            # +Inf slopes 10 + 4, over the window
    "p95_e2e": 1.0 + 1.5 * (2.3 / 3),   # cumulative 3,7,11,14,14: rank 13.3 in (1.0, 2.5], 3 obs, 2.3 in
    "p95_ttft": 0.1 + 0.1 * (2 / 4),    # 20,36,40,40: rank 38 in (0.1, 0.2]
    "p95_itl": 0.02 + 0.03 * (10 / 20),  # 100,180,200,200: rank 190 in (0.02, 0.05]
    "error_rate": 1 / 14,               # /v1/ 5xx 1 of 9 + 1 + 4 (/metrics and /health excluded)
    "tokens_per_pod_second": 150 / 2,
    "probe_perplexity": 13.0,
    "probe_exact_match": 0.85,
}
CANARY_EXPECTED = {
    "requests": 10 * WINDOW, "p95_e2e": 0.5 + 0.5 * (0.5 / 1), "p95_ttft": 0.15, "p95_itl": 0.02 + 0.03 * (45 / 50),
    "error_rate": 0.0, "tokens_per_pod_second": 120.0, "probe_perplexity": 20.0, "probe_exact_match": 0.5,
}
STABLE_BUCKETS = {
    ("0-512", "bucket_requests"): 10 * WINDOW,
    ("0-512", "bucket_p95_e2e"): 0.5 + 0.5 * (3.5 / 4),   # 6,10,10: rank 9.5 in (0.5, 1.0]
    ("512-2048", "bucket_requests"): 2 * WINDOW,
    ("512-2048", "bucket_p95_e2e"): 0.5 + 0.5 * (1.9 / 2),  # 0,2,2: rank 1.9 in (0.5, 1.0]
    ("0-512", "bucket_probe_perplexity"): 11.5,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PodServer:
    def __init__(self, pod: FakePod, t0: float):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pod.exposition(time.time() - t0).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.hits += 1

            def log_message(self, *args: object) -> None:
                pass

        self.hits = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@dataclass
class Setup:
    prometheus_url: str
    servers: list[PodServer]

    def targets(self) -> dict[str, list[ScrapeTarget]]:
        out: dict[str, list[ScrapeTarget]] = {}
        for pod, server in zip(PODS, self.servers, strict=True):
            out.setdefault(pod.revision, []).append(ScrapeTarget(pod.name, server.url))
        return out


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} missing: apt-get install -y prometheus")
    t0 = time.time() - 30  # counters well away from zero: Prometheus' extrapolation is not clamped at zero
    servers = [PodServer(pod, t0) for pod in PODS]
    groups = [{"targets": [f"127.0.0.1:{s.port}"],
               "labels": {"namespace": NS, "pod": p.name, "node": "node-1", "lad": LAD, "revision": p.revision,
                          "track": p.track}} for p, s in zip(PODS, servers, strict=True)]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "localattn-pods", "scrape_interval": "1s", "scrape_timeout": "900ms",
                                  "static_configs": groups}]}
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = _get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
                if len(targets) == len(PODS) and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError((work / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(WINDOW + 2)  # enough scrapes for a [5s] window
        yield Setup(url, servers)
    finally:
        stop_child(proc, grace=20)
        log.close()
        for s in servers:
            s.server.shutdown()


def _close(actual: float | None, expected: float, rel: float = 0.02) -> bool:
    return actual is not None and abs(actual - expected) <= rel * abs(expected) + 1e-9


def test_prometheus_provider_answers_every_template_per_arm_as_computed_by_hand(setup: Setup) -> None:
    provider = PrometheusProvider(setup.prometheus_url, timeout=5)
    for revision, expected in ((STABLE, STABLE_EXPECTED), (CANARY, CANARY_EXPECTED)):
        params = {"namespace": NS, "lad": LAD, "revision": revision}
        got = {name: provider.query(name, params, WINDOW) for name in expected}
        bad = {n: (got[n], e) for n, e in expected.items() if not _close(got[n], e)}
        assert not bad, f"{revision}: (got, expected) {bad}"
    for (bucket, name), expected_value in STABLE_BUCKETS.items():
        params = {"namespace": NS, "lad": LAD, "revision": STABLE, "bucket": bucket}
        assert _close(provider.query(name, params, WINDOW), expected_value), (bucket, name)


def test_prometheus_provider_no_data_is_none_and_bad_answers_are_provider_errors(setup: Setup) -> None:
    provider = PrometheusProvider(setup.prometheus_url, timeout=5)
    nobody = {"namespace": NS, "lad": LAD, "revision": "cccc333333"}
    assert provider.query("p95_e2e", nobody, WINDOW) is None        # no series
    assert provider.query("error_rate", nobody, WINDOW) is None     # empty / empty
    canary_bucket = {"namespace": NS, "lad": LAD, "revision": CANARY, "bucket": "0-512"}
    assert provider.query("bucket_p95_e2e", canary_bucket, WINDOW) is None
    with pytest.raises(ProviderError, match="3 series where one was expected"):
        provider.instant('up{job="localattn-pods"}')
    with pytest.raises(ProviderError, match=r"HTTP 400.*bad_data"):
        provider.instant("sum(")


def test_prometheus_provider_evaluates_at_the_windows_end(setup: Setup) -> None:
    """An `at` in the past sees the counters as they were then (the window the verdict was planned for)."""
    provider = PrometheusProvider(setup.prometheus_url, timeout=5)
    params = {"namespace": NS, "lad": LAD, "revision": STABLE}
    now = provider.instant(f'sum(vllm:generation_tokens_total{{namespace="{NS}",revision="{STABLE}"}})')
    from datetime import UTC, datetime, timedelta

    earlier = provider.for_window(datetime.now(UTC) - timedelta(seconds=3))
    then = earlier.instant(f'sum(vllm:generation_tokens_total{{namespace="{NS}",revision="{STABLE}"}})')
    assert now is not None and then is not None and 150 * 2 < now - then < 150 * 5
    assert _close(earlier.query("tokens_per_pod_second", params, 3), 75.0)


def test_collect_arm_through_prometheus_fills_figures_and_cost(setup: Setup) -> None:
    arm = collect_arm(PrometheusProvider(setup.prometheus_url, timeout=5), ArmRef(NS, LAD, STABLE), WINDOW,
                      ["0-512", "512-2048", "2048-inf"], gpus_per_pod=1.0, gpu_hour_price=3.6)
    assert not arm.errors
    assert _close(arm.total.p95_e2e, STABLE_EXPECTED["p95_e2e"])
    assert _close(arm.total.tokens_per_gpu_second, 75.0)
    assert _close(arm.total.cost_per_million, 3.6 / 3600 / 75.0 * 1e6)
    assert arm.buckets["2048-inf"].requests is None


def test_scrape_provider_agrees_with_prometheus_on_the_same_series(setup: Setup) -> None:
    state = ScrapeState()
    failures = ScrapeProvider(setup.targets(), state, timeout=2).sample()
    assert failures == {}
    time.sleep(WINDOW)
    scrape = ScrapeProvider(setup.targets(), state, timeout=2)
    prometheus = PrometheusProvider(setup.prometheus_url, timeout=5)
    for revision, expected in ((STABLE, STABLE_EXPECTED), (CANARY, CANARY_EXPECTED)):
        params = {"namespace": NS, "lad": LAD, "revision": revision}
        for name, value in expected.items():
            from_scrape, from_prometheus = scrape.query(name, params, WINDOW), prometheus.query(name, params, WINDOW)
            assert _close(from_scrape, value, 0.03), (revision, name, from_scrape, value)
            assert from_prometheus is not None and _close(from_scrape, from_prometheus, 0.03), (name, from_prometheus)
    for (bucket, name), value in STABLE_BUCKETS.items():
        params = {"namespace": NS, "lad": LAD, "revision": STABLE, "bucket": bucket}
        assert _close(scrape.query(name, params, WINDOW), value, 0.03)
        assert _close(scrape.query(name, params, WINDOW), prometheus.query(name, params, WINDOW) or -1, 0.03)
    assert all(s.hits >= 2 for s in setup.servers)


def test_first_available_falls_back_to_scraping_when_prometheus_is_down(setup: Setup) -> None:
    state = ScrapeState()
    ScrapeProvider(setup.targets(), state).sample()
    time.sleep(2.0)
    down = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=2)
    both = FirstAvailable([down, ScrapeProvider(setup.targets(), state)])
    params = {"namespace": NS, "lad": LAD, "revision": CANARY}
    assert _close(both.query("tokens_per_pod_second", params, 2.0), 120.0, 0.03)


def test_prometheus_down_is_a_provider_error_at_once() -> None:
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=5)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="unreachable"):
        provider.query("requests", {"namespace": NS, "lad": LAD, "revision": STABLE}, 60)
    assert time.monotonic() - started < 2


def test_prometheus_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (the backlog) and never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        provider = PrometheusProvider(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"no answer within 0\.5s"):
            provider.query("requests", {"namespace": NS, "lad": LAD, "revision": STABLE}, 60)
        assert time.monotonic() - started < 3


def test_only_http_urls_are_opened() -> None:
    with pytest.raises(ProviderError, match="not http"):
        PrometheusProvider("file:///etc/hostname").instant("up")


def test_a_response_that_is_not_json_is_a_provider_error() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>a proxy's login page</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = PrometheusProvider(f"http://127.0.0.1:{server.server_address[1]}", timeout=2)
        with pytest.raises(ProviderError, match="not JSON"):
            provider.instant("up")
    finally:
        server.shutdown()
