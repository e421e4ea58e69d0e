"""`dashboard_check`: query extraction and variable substitution (pure), then the shipped dashboard's every
panel against the REAL Prometheus (Debian's binary, started with the dev cluster's own config: its pod file-SD
written by `discovery.render_file_sd` from pod objects, and its operator job fed by the operator's real metrics
module through `operator_target`).

The fake serving pods export every series the dashboard reads, except what the test leaves out on purpose: the
canary has no 512-2048 bucket, so exactly the canary's queries of that bucket row must be reported.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localattn_dev import dashboard_check as dc
from localattn_dev.discovery import render_file_sd
from localattn_dev.ports import free_port
from localattn_dev.procs import stop_child
from localattn_dev.prometheus import (
    PROMETHEUS,
    PrometheusFiles,
    config,
    operator_target,
    operator_target_file,
    prometheus_argv,
)
from localattn_dev.testbackend import Backend

NS, LAD = "team-a", "llm"


# --- pure ---------------------------------------------------------------------------------------------------


def test_queries_follow_rows_repeats_and_collapsed_panels() -> None:
    board = {"panels": [
        {"type": "timeseries", "title": "top", "targets": [{"refId": "A", "expr": "up"},
                                                           {"refId": "B", "expr": "hidden", "hide": True},
                                                           {"refId": "C", "expr": "  "}]},
        {"type": "row", "title": "per bucket", "repeat": "b"},
        {"type": "timeseries", "title": "in row", "targets": [{"refId": "A", "expr": "x{b=\"$b\"}",
                                                               "legendFormat": "{{pod}}"}]},
        {"type": "row", "title": "collapsed", "collapsed": True, "panels": [
            {"type": "stat", "title": "nested", "repeat": "pod", "targets": [{"refId": "A", "expr": "y"}]}]},
        {"type": "timeseries", "title": "after", "targets": [{"refId": "A", "expr": "z"}]},
    ]}
    got = [(q.panel, q.ref, q.expr, q.repeat) for q in dc.panel_queries(board)]
    assert got == [("top", "A", "up", None), ("in row", "A", 'x{b="$b"}', "b"), ("nested", "A", "y", "pod"),
                   ("after", "A", "z", None)]
    assert dc.panel_queries(board)[1].label() == "in row [{{pod}}]"


def test_substitution_of_every_variable_syntax() -> None:
    expr = 'a{x="$ns",y="${ns}",z=~"${ns:regex}",w="[[ns]]",v="$nsx"}[$__rate_interval] / $gpus'
    assert dc.referenced(expr) == {"ns", "nsx", "__rate_interval", "gpus"}
    out = dc.substitute(expr, {"ns": "team-a", "__rate_interval": "1m", "gpus": "2"})
    assert out == 'a{x="team-a",y="team-a",z=~"team-a",w="team-a",v="$nsx"}[1m] / 2'  # $nsx is not $ns
    assert dc.referenced(out) == {"nsx"}


def test_label_values_queries_and_time_range() -> None:
    assert dc.parse_label_values('label_values(m{a="$a"}, lad)') == ('m{a="$a"}', "lad")
    assert dc.parse_label_values("label_values(namespace)") == (None, "namespace")
    with pytest.raises(ValueError, match="not a label_values"):
        dc.parse_label_values("query_result(up)")
    assert dc.range_seconds({"time": {"from": "now-30m", "to": "now"}}) == 1800
    assert dc.range_seconds({"time": {"from": "now-2h"}}) == 7200
    assert dc.range_seconds({}) == 1800


def test_no_data_means_no_point_that_is_a_number() -> None:
    def matrix(*values: str) -> dict[str, Any]:
        return {"data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, v] for v in values]}]}}

    assert dc.has_data(matrix("NaN", "0"))  # a zero is data
    assert not dc.has_data(matrix("NaN", "NaN"))  # histogram_quantile of no requests
    assert not dc.has_data({"data": {"resultType": "matrix", "result": []}})
    assert dc.has_data({"data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3"]}]}})


def test_variables_resolve_in_order_through_label_values() -> None:
    board = {"templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "namespace", "type": "query", "query": "label_values(m, namespace)", "current": {}},
        {"name": "lad", "type": "query", "query": 'label_values(m{namespace="$namespace"}, lad)', "current": {}},
        {"name": "bucket", "type": "query", "query": "label_values(h_count, b)", "multi": True,
         "current": {"value": "$__all"}},
        {"name": "price", "type": "textbox", "query": "1", "current": {"value": "2.5"}},
        {"name": "empty", "type": "query", "query": "label_values(nothing, x)", "current": {}},
    ]}}
    asked: list[tuple[str, Mapping[str, str]]] = []
    answers = {"namespace": ["b-ns", "a-ns"], "lad": ["llm"], "b": ["2-inf", "0-2"], "x": []}

    def get(path: str, params: Mapping[str, str]) -> Mapping[str, Any]:
        asked.append((path, dict(params)))
        return {"status": "success", "data": answers[path.split("/")[-2]]}

    values, problems = dc.resolve_variables(board, get, 0.0, 60.0, {})
    assert values == {"namespace": ["a-ns"], "lad": ["llm"], "bucket": ["0-2", "2-inf"], "price": ["2.5"]}
    assert problems == {"empty": "no values for label_values(nothing, x)"}
    assert asked[1] == ("/api/v1/label/lad/values", {"start": "0.000", "end": "60.000",
                                                      "match[]": 'm{namespace="a-ns"}'})
    values, _ = dc.resolve_variables(board, get, 0.0, 60.0, {"namespace": "team-a"})
    assert values["namespace"] == ["team-a"] and asked[-3][1]["match[]"] == 'm{namespace="team-a"}'


# --- the real Prometheus ------------------------------------------------------------------------------------


@dataclass
class ServingPod:
    name: str
    track: str
    revision: str
    buckets: tuple[str, ...]

    def exposition(self, t: float) -> str:
        """vLLM-like series growing linearly in `t` (every histogram observation in its lowest bucket)."""
        out = []

        def histogram(name: str, rate: float, labels: str = 'model_name="m",engine="0"') -> None:
            out.append(f"# TYPE {name} histogram")
            for le in ("0.1", "1.0", "+Inf"):
                out.append(f'{name}_bucket{{{labels},le="{le}"}} {rate * t}')
            out.append(f"{name}_count{{{labels}}} {rate * t}")
            out.append(f"{name}_sum{{{labels}}} {0.05 * rate * t}")

        histogram("vllm:e2e_request_latency_seconds", 4)
        histogram("vllm:time_to_first_token_seconds", 4)
        histogram("vllm:inter_token_latency_seconds", 40)
        for bucket in self.buckets:
            histogram("localattn_request_latency_seconds", 2, f'length_bucket="{bucket}"')
            out.append(f'localattn_probe_perplexity{{length_bucket="{bucket}"}} 11.0')
        out += [
            "# TYPE vllm:generation_tokens_total counter", f'vllm:generation_tokens_total{{engine="0"}} {40 * t}',
            "# TYPE http_requests_total counter",
            f'http_requests_total{{handler="/v1/completions",method="POST",status="2xx"}} {4 * t}',
            'vllm:kv_cache_usage_perc{engine="0"} 0.25', 'vllm:num_requests_waiting{engine="0"} 1',
            'vllm:num_requests_running{engine="0"} 3', "localattn_probe_perplexity 12.5",
            "localattn_probe_exact_match 0.9", f"localattn_probe_age_seconds {t % 30}",
        ]
        return "\n".join(out) + "\n"

    def object(self, port: int) -> dict[str, Any]:
        """The pod as the apiserver lists it: what the dev cluster's discovery turns into a scrape target."""
        return {"metadata": {"namespace": NS, "name": self.name,
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)},
                             "labels": {"localattn.dev/deployment": LAD, "localattn.dev/revision": self.revision,
                                        "localattn.dev/track": self.track}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "vllm"}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"}}


PODS = [ServingPod("llm-stable-a", "stable", "aaaa111111", ("0-512", "512-2048")),
        ServingPod("llm-canary-b", "canary", "bbbb222222", ("0-512",))]


@contextlib.contextmanager
def _operator_metrics() -> Iterator[int]:
    """The operator's real metrics module, as one rollout's passes move it, served like `--metrics-port`."""
    from prometheus_client import REGISTRY, start_http_server

    from localattn_operator import metrics

    metrics.observe_rollout(NS, LAD, event_reasons=["RolloutStarted"], achieved_weight=25,
                            gates=[("latency", "Successful"), ("quality", "Successful")], step=2,
                            paired=[("all", 0.93), ("0-512", 1.0)])

    def passes() -> None:
        while not stop.wait(0.5):
            metrics.RECONCILES.labels(result="ok").inc()
            metrics.RECONCILE_SECONDS.observe(0.02)
            metrics.ANALYSIS_SECONDS.observe(0.3)

    stop = threading.Event()
    threading.Thread(target=passes, daemon=True).start()
    server, _ = start_http_server(0, "127.0.0.1", registry=REGISTRY)
    try:
        yield int(server.server_address[1])
    finally:
        stop.set()
        server.shutdown()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} missing: `make data-plane` (apt-get install -y prometheus)")
    files = PrometheusFiles(tmp_path_factory.mktemp("dev"))
    files.targets.mkdir(parents=True)
    files.config.write_text(config(files))
    stack = contextlib.ExitStack()
    t0 = time.time() - 60  # counters well away from zero
    servers = [stack.enter_context(Backend("127.0.0.1", free_port(), lambda p=p: p.exposition(time.time() - t0)))
               for p in PODS]
    operator_port = stack.enter_context(_operator_metrics())
    files.pods_file.write_text(render_file_sd(p.object(b.port) for p, b in zip(PODS, servers, strict=True)))
    operator_target_file(files, "test").write_text(operator_target("127.0.0.1", operator_port))
    port = free_port()
    log = open(files.root / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(prometheus_argv(files, port), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=5) as r:
                    targets = json.loads(r.read())["data"]["activeTargets"]
                if len(targets) == len(PODS) + 1 and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError((files.root / "prometheus.log").read_text()[-3000:])
            time.sleep(0.5)
        time.sleep(9)  # several 2 s scrapes: a [6s] rate has two samples at the range's later points
        yield url
    finally:
        stop_child(proc, grace=20)
        log.close()
        stack.close()


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    from localattn_cli.dashboard import render_json

    return json.loads(render_json())


def check(url: str, board: Mapping[str, Any], **kw: Any) -> list[str]:
    return dc.failing_panels(url, board, range_s=30, rate_interval="6s", **kw)


def test_every_panel_of_the_dashboard_has_data_except_what_the_pods_lack(prometheus: str,
                                                                           board: dict[str, Any]) -> None:
    """Variables resolved as Grafana does (namespace and lad from label_values, every bucket of the row)."""
    failures = check(prometheus, board)
    lacking = sorted(f.split(": ", 1)[0] for f in failures)
    assert lacking == [
        "End-to-end latency p50 / p95 in the bucket [canary p50] (length_bucket=512-2048)",
        "End-to-end latency p50 / p95 in the bucket [canary p95] (length_bucket=512-2048)",
        "Probe perplexity in the bucket [canary] (length_bucket=512-2048)",
        "Request rate in the bucket [canary] (length_bucket=512-2048)",
    ], "\n".join(failures)
    assert all("no data in the last 30s" in f for f in failures)


def test_a_broken_or_misspelled_query_is_reported_with_its_reason(prometheus: str, board: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(board))
    broken["panels"].append({"type": "timeseries", "title": "typos", "targets": [
        {"refId": "A", "expr": 'sum(rate(vllm:e2e_request_latency_second_count{lad="$lad"}[$__rate_interval]))'},
        {"refId": "B", "expr": "sum(rate(up[$__rate_interval])"},
        {"refId": "C", "expr": "up * $undefined"}]})
    failures = [f for f in check(prometheus, broken, variables={"namespace": NS, "lad": LAD}) if "typos" in f]
    assert len(failures) == 3, failures
    assert failures[0].startswith("typos [A]: no data") and 'lad="llm"' in failures[0]
    assert failures[1].startswith("typos [B]: error: HTTP 400: bad_data:")
    assert failures[2].startswith("typos [C]: unresolved variable $undefined")


def test_another_lad_shows_nothing(prometheus: str, board: dict[str, Any]) -> None:
    failures = check(prometheus, board, variables={"namespace": NS, "lad": "nobody"})
    arm_panels = {f.split(" [", 1)[0] for f in failures}
    assert {"Request rate", "Probe exact match", "Canary weight", "KV cache usage", "Paired agreement"} <= arm_panels
    assert not {"Reconciles by result", "Reconcile errors"} & arm_panels  # not per LAD: the operator's own


def test_skipped_panels_are_not_checked(prometheus: str, board: dict[str, Any]) -> None:
    """A LAD without the paired comparison: the opt-in panel is left out on request, nothing else."""
    from localattn_cli.dashboard import OPT_IN_PANELS

    every = check(prometheus, board, variables={"namespace": NS, "lad": "nobody"})
    skipped = check(prometheus, board, variables={"namespace": NS, "lad": "nobody"}, skip=OPT_IN_PANELS)
    assert sorted(every) == sorted(skipped + [f for f in every if f.startswith("Paired agreement [")])
    assert len(every) > len(skipped)


def test_the_cli_check_lists_the_failures_and_exits_1(prometheus: str, capsys: pytest.CaptureFixture[str]) -> None:
    from localattn_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--check", prometheus, "--namespace", NS, "--lad", LAD, "--range", "30s",
              "--rate-interval", "6s"])
    out = capsys.readouterr().out.splitlines()
    assert exited.value.code == 1
    assert len(out) == 4 and all("(length_bucket=512-2048)" in line for line in out), out
