"""The Grafana dashboard: committed copies are the generated JSON, gated figures use the operator's templates,
and every metric name it reads is one vLLM, the runtime or the operator really exports (pure, no Grafana)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Any

import pytest

from localattn_cli import dashboard
from localattn_dev.dashboard_check import panel_queries, referenced, variables
from localattn_operator import queries

ROOT = Path(__file__).resolve().parents[2]
COPIES = [ROOT / "dashboards" / "localattn.json", ROOT / "helm" / "localattn" / "dashboards" / "localattn.json"]
# What the analysis gates on: each must appear in the dashboard exactly as the operator queries it.
GATED = ("p95_e2e", "p95_ttft", "p95_itl", "error_rate", "tokens_per_pod_second", "probe_perplexity",
         "probe_exact_match", "probe_age")
BUCKETED = ("bucket_p95_e2e", "bucket_probe_perplexity")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return json.loads(dashboard.render_json())


def exprs(board: dict[str, Any]) -> list[str]:
    return [q.expr for q in panel_queries(board)]


@pytest.mark.parametrize("copy", COPIES, ids=["file", "chart"])
def test_committed_copies_are_the_generated_dashboard(copy: Path) -> None:
    assert copy.read_text() == dashboard.render_json(), "stale: run `make dashboard`"


def test_the_cli_writes_what_render_json_returns(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    subprocess.run([sys.executable, "-m", "localattn_cli.main", "dashboard", "--out", str(out)], check=True,
                   cwd=ROOT, timeout=120)
    assert out.read_text() == dashboard.render_json()


@pytest.mark.parametrize("name", GATED)
def test_gated_figures_use_the_operators_template_per_arm(generated: dict[str, Any], name: str) -> None:
    """One definition: the template text with the arm's selector and Grafana's window, for both arms."""
    all_exprs = "\n".join(exprs(generated))
    for track in dashboard.TRACKS:
        sel = f'namespace="$namespace",lad="$lad",track="{track}"'
        rendered = Template(queries.TEMPLATES[name]).substitute(sel=sel, window="$__rate_interval")
        assert rendered in all_exprs, f"{name} for {track} is not queried as the operator queries it"


@pytest.mark.parametrize("name", BUCKETED)
def test_bucket_figures_use_the_operators_template_per_arm(generated: dict[str, Any], name: str) -> None:
    bucket_exprs = [q.expr for q in panel_queries(generated) if q.repeat == dashboard.BUCKET_VARIABLE]
    for track in dashboard.TRACKS:
        rendered = Template(queries.TEMPLATES[name]).substitute(
            sel=f'namespace="$namespace",lad="$lad",track="{track}"', window="$__rate_interval",
            bucket="$length_bucket")
        assert rendered in "\n".join(bucket_exprs), (name, track)


def test_p50_is_the_p95_template_at_another_quantile() -> None:
    p50 = dashboard.quantile_expr("p95_ttft", "x", 0.5)
    assert p50 == dashboard.template_expr("p95_ttft", "x").replace("histogram_quantile(0.95,", "histogram_quantile(0.5,")
    with pytest.raises(ValueError, match="not a p95"):
        dashboard.quantile_expr("requests", "x", 0.5)
    with pytest.raises(ValueError, match="takes"):
        dashboard.template_expr("bucket_p95_e2e", "x")  # a bucket template without its bucket


def test_cost_is_the_providers_formula() -> None:
    """$price / 3600 / tokens-per-GPU-second x 1e6, as `metrics_provider.cost_per_million` computes it."""
    from localattn_operator.metrics_provider import cost_per_million

    expr = dashboard.cost_per_million("s")
    tokens = dashboard.tokens_per_gpu_second("s")
    assert expr == f"$gpu_hour_price / 3600 / ({tokens}) * 1e6"
    # The same arithmetic with numbers in place of the variables and the template's value.
    price, per_pod, gpus = 3.6, 150.0, 2.0
    value = eval(expr.replace("$gpu_hour_price", str(price)).replace(  # our own arithmetic
        f"({dashboard.template_expr('tokens_per_pod_second', 's')})", str(per_pod)).replace("$gpus_per_pod", str(gpus)))
    assert value == pytest.approx(cost_per_million(per_pod / gpus, price))


def _known_metric_names() -> set[str]:
    """Series names as exposed: vLLM's (from its metrics logger's source), the runtime's, the operator's."""
    import prometheus_client
    import vllm.v1.metrics.loggers as loggers

    import localattn_runtime.metrics as runtime_metrics
    from localattn_operator import metrics as operator_metrics

    names: set[str] = set()

    def add(name: str, kind: str) -> None:
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
        if kind == "histogram":
            names.update(f"{name}_{s}" for s in ("bucket", "count", "sum"))

    source = Path(loggers.__file__).read_text()
    declared = re.findall(r'self\._(gauge|counter|histogram)_cls\(\s*name="(vllm:[a-z0-9_]+)"', source)
    assert len(declared) > 20, "vLLM's metrics logger changed shape: update this parser"
    for kind, name in declared:
        add(name, kind)
    add("http_requests_total", "gauge")  # prometheus-fastapi-instrumentator, which vLLM's server installs
    for value in vars(operator_metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            for metric in value.describe():
                add(metric.name, metric.type)
    for const in ("CONFIG_INFO", "KV_BLOCKS_FREED", "PROBE_PERPLEXITY", "PROBE_EXACT_MATCH", "PROBE_AGE",
                  "PROBE_RUNS"):
        add(getattr(runtime_metrics, const), "counter")
    add(queries.BUCKET_LATENCY_METRIC, "histogram")  # the runtime's histogram, named by the shared contract
    return names


def test_every_metric_name_is_really_exported(generated: dict[str, Any]) -> None:
    known = _known_metric_names()
    assert "vllm:e2e_request_latency_seconds_bucket" in known and "vllm:generation_tokens_total" in known
    used = {m for e in exprs(generated) for m in _SELECTOR.findall(e)}
    used |= {m for v in variables(generated) for m in _SELECTOR.findall(v.query)}
    assert used, "no metric names found"
    assert used - known == set(), f"not exported by vLLM, the runtime or the operator: {sorted(used - known)}"


def test_required_panels_are_there(generated: dict[str, Any]) -> None:
    titles = {q.panel for q in panel_queries(generated)}
    for wanted in ("Request rate", "End-to-end latency p50 / p95", "Time to first token p50 / p95",
                   "Inter-token latency p50 / p95", "End-to-end latency p50 / p95 in the bucket", "Probe perplexity",
                   "Probe exact match", "Canary weight", "Rollout step", "Generated tokens per GPU-second",
                   "Cost per 1M generated tokens", "KV cache usage", "Waiting and running requests",
                   "Reconciles by result", "Reconcile errors", "Analysis verdicts by gate", "Paired agreement"):
        assert wanted in titles, wanted


def test_every_variable_a_query_uses_is_defined(generated: dict[str, Any]) -> None:
    defined = {v.name for v in variables(generated)} | {"__rate_interval"}
    for q in panel_queries(generated):
        assert referenced(q.expr) <= defined, (q.panel, referenced(q.expr) - defined)
    assert {v.name: v.type for v in variables(generated)}["datasource"] == "datasource"
    ids = [p["id"] for p in generated["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert all(t["datasource"] == "${datasource}" for p in generated["panels"] for t in p.get("targets", []))
