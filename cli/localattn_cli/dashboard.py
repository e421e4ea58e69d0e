"""`localattn dashboard`: the Grafana dashboard, built with grafanalib from the operator's query templates.

One definition: wherever a panel shows a quantity the rollout analysis gates on (p95 latency, TTFT, ITL, error
rate, tokens per pod-second, probe quality, per length bucket), its PromQL is the operator's template
(`localattn_operator.queries.TEMPLATES`) with the arm selector `namespace, lad, track` and Grafana's
`$__rate_interval` as the window, so the dashboard and the gates cannot disagree. The other panels (request
rate, per-pod KV cache and queue, the operator's own metrics) use metric names checked against vLLM, the runtime
and the operator by tests/cli/test_dashboard.py. The generated JSON is committed (dashboards/localattn.json and
the chart's copy); `make dashboard` rewrites both and a test fails when they are stale.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from localattn_operator import queries

TITLE = "localattn: canary rollouts"
UID = "localattn-rollouts"
DATASOURCE = "${datasource}"
WINDOW = "$__rate_interval"
TRACKS = ("stable", "canary")
SCOPE = 'namespace="$namespace",lad="$lad"'
BUCKET_VARIABLE = "length_bucket"
# The variables' source series: every vLLM serving pod exports it from start-up (not only after a request).
SERVING_SERIES = "vllm:num_requests_running"


def arm(track: str) -> str:
    """The arm's label matchers: the LAD's pods on one track (the operator selects by revision; a dashboard
    reads by track, which a revision keeps while it serves as that arm)."""
    return f'{SCOPE},track="{track}"'


def template_expr(name: str, sel: str, bucket: str | None = None) -> str:
    """The operator's template `name` over `sel`, windowed by `$__rate_interval` (and `bucket`, when it has one)."""
    params = {"sel": sel, "window": WINDOW} | ({"bucket": bucket} if bucket is not None else {})
    if queries.placeholders(name) != set(params):
        raise ValueError(f"template {name!r} takes {sorted(queries.placeholders(name))}, not {sorted(params)}")
    return Template(queries.TEMPLATES[name]).substitute(params)


def quantile_expr(name: str, sel: str, q: float, bucket: str | None = None) -> str:
    """A p95 template at another quantile (the same histogram, aggregation and window)."""
    expr = template_expr(name, sel, bucket)
    if not expr.startswith("histogram_quantile(0.95,"):
        raise ValueError(f"template {name!r} is not a p95 histogram_quantile")
    return f"histogram_quantile({q}," + expr[len("histogram_quantile(0.95,"):]


def tokens_per_gpu_second(sel: str) -> str:
    """The analysis' throughput: tokens per pod-second divided by the GPUs per pod (`$gpus_per_pod`)."""
    return f"({template_expr('tokens_per_pod_second', sel)}) / $gpus_per_pod"


def cost_per_million(sel: str) -> str:
    """As `metrics_provider.cost_per_million`: price per GPU-hour / 3600 / tokens per GPU-second x 1e6."""
    return f"$gpu_hour_price / 3600 / ({tokens_per_gpu_second(sel)}) * 1e6"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    bars: bool = False


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]
    repeat: str | None = None  # a variable: the row (and its panels) once per selected value


def per_arm(build: Any) -> tuple[Query, ...]:
    return tuple(Query(build(arm(track)), track) for track in TRACKS)


def quantiles(name: str, bucket: str | None = None) -> tuple[Query, ...]:
    return tuple(Query(quantile_expr(name, arm(track), q, bucket), f"{track} p{round(q * 100)}")
                 for track in TRACKS for q in (0.5, 0.95))


def _op(metric: str, scoped: bool = True) -> str:
    return f"{metric}{{{SCOPE}}}" if scoped else metric


RECONCILES = "localattn_operator_reconciles_total"
# Data only where the LAD opts in (spec.pairedComparison.enabled): dashboard checks may skip it.
PAIRED_PANEL = "Paired agreement"
OPT_IN_PANELS = (PAIRED_PANEL,)

ROWS: tuple[RowSpec, ...] = (
    RowSpec("Traffic and latency per arm", (
        PanelSpec("Request rate", "reqps", per_arm(
            lambda s: f"sum(rate(vllm:e2e_request_latency_seconds_count{{{s}}}[{WINDOW}]))"),
            "Finished requests per second (vLLM's end-to-end histogram count)."),
        PanelSpec("Error rate (non-2xx share)", "percentunit", per_arm(lambda s: template_expr("error_rate", s)),
                  "The error gate's query (template error_rate)."),
        PanelSpec("End-to-end latency p50 / p95", "s", quantiles("p95_e2e"),
                  "p95: the latency gate's query (template p95_e2e)."),
        PanelSpec("Time to first token p50 / p95", "s", quantiles("p95_ttft"), "p95: template p95_ttft."),
        PanelSpec("Inter-token latency p50 / p95", "s", quantiles("p95_itl"), "p95: template p95_itl."),
    )),
    RowSpec(f"Prompt-length bucket ${BUCKET_VARIABLE}", (
        PanelSpec("Request rate in the bucket", "reqps", per_arm(
            lambda s: f'sum(rate({queries.BUCKET_LATENCY_METRIC}_count{{{s},{queries.BUCKET_LABEL}='
                      f'"${BUCKET_VARIABLE}"}}[{WINDOW}]))'),
            "The runtime's per-length-bucket latency histogram (prompt tokens lo <= n < hi)."),
        PanelSpec("End-to-end latency p50 / p95 in the bucket", "s",
                  quantiles("bucket_p95_e2e", f"${BUCKET_VARIABLE}"),
                  "p95: the per-bucket latency gate's query (template bucket_p95_e2e)."),
        PanelSpec("Probe perplexity in the bucket", "none", per_arm(
            lambda s: template_expr("bucket_probe_perplexity", s, f"${BUCKET_VARIABLE}")),
            "The probe's golden texts of this length (template bucket_probe_perplexity)."),
    ), repeat=BUCKET_VARIABLE),
    RowSpec("Quality", (
        PanelSpec("Probe perplexity", "none", per_arm(lambda s: template_expr("probe_perplexity", s)),
                  "Golden-set perplexity (template probe_perplexity): lower is better."),
        PanelSpec("Probe exact match", "percentunit", per_arm(lambda s: template_expr("probe_exact_match", s)),
                  "Golden greedy completions reproduced exactly (template probe_exact_match)."),
        PanelSpec("Probe age", "s", per_arm(lambda s: template_expr("probe_age", s)),
                  "Seconds since the arm's last successful probe run (template probe_age)."),
        PanelSpec(PAIRED_PANEL, "percentunit", (Query(
            f"max by (bucket) ({_op('localattn_operator_paired_agreement')})", "{{bucket}}"),),
            "Greedy token agreement of the same prompts on one stable and one canary pod, per length bucket, at "
            "each analysis (the quality.agreement gate). Empty unless spec.pairedComparison.enabled."),
    )),
    RowSpec("Rollout", (
        PanelSpec("Canary weight", "percent", (Query(f"max({_op('localattn_operator_canary_weight_percent')})",
                                                     "achieved weight"),),
                  "The canary's achieved traffic weight (status.rollout.achievedWeight)."),
        PanelSpec("Rollout step", "none", (Query(f"max({_op('localattn_operator_rollout_step')})", "step"),),
                  "1-based step of spec.rollout.steps the canary is at; 0: no canary."),
        PanelSpec("Rollouts by result", "none", (Query(
            f"sum by (result) ({_op('localattn_operator_rollouts_total')})", "{{result}}"),),
            "Cumulative rollout transitions since the operator started: started, promoted, rolled_back, aborted."),
        PanelSpec("Analysis verdicts by gate", "none", (Query(
            f"sum by (gate, phase) (increase({_op('localattn_operator_analysis_verdicts_total')}[{WINDOW}]))",
            "{{gate}} {{phase}}"),), "Gate results per analysis interval.", bars=True),
    )),
    RowSpec("Throughput and cost per arm", (
        PanelSpec("Generated tokens per GPU-second", "none", per_arm(tokens_per_gpu_second),
                  "Template tokens_per_pod_second / $gpus_per_pod (set it to the LAD's GPUs per pod)."),
        PanelSpec("Cost per 1M generated tokens", "short", per_arm(cost_per_million),
                  "$gpu_hour_price (spec.cost.gpuHourPrice) / 3600 / tokens per GPU-second x 1e6."),
    )),
    RowSpec("Capacity per pod", (
        PanelSpec("KV cache usage", "percentunit", (Query(
            f"max by (pod) (vllm:kv_cache_usage_perc{{{SCOPE}}})", "{{pod}}"),), "vLLM's KV cache usage (0..1)."),
        PanelSpec("Waiting and running requests", "none", (
            Query(f"sum by (pod) (vllm:num_requests_waiting{{{SCOPE}}})", "{{pod}} waiting"),
            Query(f"sum by (pod) ({SERVING_SERIES}{{{SCOPE}}})", "{{pod}} running"))),
    )),
    RowSpec("Operator", (
        PanelSpec("Reconciles by result", "ops", (Query(
            f"sum by (result) (rate({RECONCILES}[{WINDOW}]))", "{{result}}"),)),
        PanelSpec("Reconcile errors", "ops", (Query(
            f'sum(rate({RECONCILES}{{result="error"}}[{WINDOW}])) or 0 * sum(rate({RECONCILES}[{WINDOW}]))',
            "errors"),), "0 while the operator is scraped and never failed; no data: the operator is not scraped."),
        PanelSpec("Reconcile duration p95", "s", (Query(
            "histogram_quantile(0.95, sum by (le) (rate(localattn_operator_reconcile_duration_seconds_bucket"
            f"[{WINDOW}])))", "p95"),)),
        PanelSpec("Analysis duration p95", "s", (Query(
            "histogram_quantile(0.95, sum by (le) (rate(localattn_operator_analysis_duration_seconds_bucket"
            f"[{WINDOW}])))", "p95"),), "Wall time of measuring one analysis window."),
    )),
)


def _variables() -> list[Any]:
    from grafanalib.core import Template as Variable

    def query(name: str, label: str, expr: str, **kw: Any) -> Any:
        return Variable(name=name, label=label, query=expr, dataSource=DATASOURCE, refresh=2, **kw)

    return [
        Variable(name="datasource", label="Data source", query="prometheus", type="datasource"),
        query("namespace", "Namespace", f"label_values({SERVING_SERIES}, namespace)"),
        query("lad", "LocalAttnDeployment", f'label_values({SERVING_SERIES}{{namespace="$namespace"}}, lad)'),
        query(BUCKET_VARIABLE, "Length bucket",
              f"label_values({queries.BUCKET_LATENCY_METRIC}_count{{{SCOPE}}}, {queries.BUCKET_LABEL})",
              multi=True, includeAll=True, default="$__all"),
        Variable(name="gpus_per_pod", label="GPUs per pod", query="1", default="1", type="textbox"),
        Variable(name="gpu_hour_price", label="GPU-hour price", query="1", default="1", type="textbox"),
    ]


def build() -> Any:
    """The grafanalib Dashboard: an expanded row per group (the bucket row repeated per bucket), three panels
    across."""
    from grafanalib.core import Dashboard, GridPos, Repeat, RowPanel, Target, Templating, Time, TimeSeries

    panels: list[Any] = []
    y = 0
    for row in ROWS:
        panels.append(RowPanel(title=row.title, gridPos=GridPos(h=1, w=24, x=0, y=y),
                               repeat=Repeat("h", row.repeat) if row.repeat else Repeat()))
        y += 1
        for i, spec in enumerate(row.panels):
            x = (i % 3) * 8
            if i and x == 0:
                y += 8
            targets = [Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + n), datasource=DATASOURCE)
                       for n, q in enumerate(spec.queries)]
            panels.append(TimeSeries(
                title=spec.title, description=spec.description, dataSource=DATASOURCE, targets=targets,
                unit=spec.unit, gridPos=GridPos(h=8, w=8, x=x, y=y), drawStyle="bars" if spec.bars else "line",
            ))
        y += 8
    return Dashboard(
        title=TITLE, uid=UID, tags=["localattn", "vllm"], timezone="utc", refresh="30s",
        description="Canary vs stable per LocalAttnDeployment: the figures the rollout analysis gates on.",
        time=Time("now-30m", "now"), templating=Templating(list=_variables()), panels=panels,
    ).auto_panel_ids()


def render_json() -> str:
    """The dashboard JSON as committed (sorted keys, two-space indent, trailing newline)."""
    from grafanalib._gen import DashboardEncoder

    return json.dumps(build().to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def _run(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    text = render_json()
    for out in args.out or []:
        Path(out).write_text(text)
    if not args.out:
        print(text, end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Every panel's queries against a real Prometheus: exit 1 and list the ones that error or show nothing."""
    from localattn_dev.dashboard_check import failing_panels
    from localattn_operator.duration import parse_duration

    fixed = {k: v for k, v in (("namespace", args.namespace), ("lad", args.lad)) if v}
    failures = failing_panels(args.check, json.loads(render_json()), variables=fixed,
                              range_s=parse_duration(args.range) if args.range else None,
                              rate_interval=args.rate_interval, skip=() if args.opt_in else OPT_IN_PANELS)
    print("\n".join(failures) if failures else "every panel has data")
    return 1 if failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser("dashboard", help="the Grafana dashboard (JSON) generated from the query templates")
    cmd.add_argument("--out", action="append", help="write to this file instead of stdout (repeatable)")
    cmd.add_argument("--check", metavar="PROMETHEUS_URL",
                     help="instead: run every panel's queries there; exit 1 listing those that error or show nothing")
    cmd.add_argument("--namespace", help="--check: the dashboard's namespace variable (default: the first found)")
    cmd.add_argument("--lad", help="--check: the LocalAttnDeployment (default: the first found)")
    cmd.add_argument("--range", help="--check: time range, e.g. 1h (default: the dashboard's, 30m)")
    cmd.add_argument("--rate-interval", default="1m",
                     help="--check: what $__rate_interval stands for; at least 4 scrape intervals (default 1m)")
    cmd.add_argument("--opt-in", action="store_true",
                     help=f"--check: also the panels that need an opt-in ({', '.join(OPT_IN_PANELS)})")
    cmd.set_defaults(func=_run)
