"""Run every panel query of a Grafana dashboard against a real Prometheus: which ones error or show nothing?

A dashboard whose queries silently return nothing (a renamed metric, a label the scrape never sets) looks
fine until the night it is needed. `failing_panels` does what Grafana does when the dashboard is opened:
resolves the template variables (`label_values(...)` through Prometheus' label API, textboxes and constants to
their defaults, the bucket row once per value), substitutes them and Grafana's built-ins, and runs each target
as a range query over the dashboard's time range. A query fails when Prometheus refuses it or when no series
has a single non-NaN point in the range (what Grafana draws as "No data").

The extraction and substitution are pure (tested without Prometheus); `failing_panels` is the thin I/O.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 10.0
ALL = "$__all"
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S)
_RELATIVE = re.compile(r"^now-(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel: `repeat` names the variable the panel (or its row) is repeated over."""

    panel: str
    ref: str
    legend: str
    expr: str
    repeat: str | None = None

    def label(self) -> str:
        return f"{self.panel} [{self.legend or self.ref}]"


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    query: str
    default: str | None
    multi: bool


def _panels(panels: Sequence[Mapping[str, Any]], row_repeat: str | None = None) -> Iterator[tuple[Mapping[str, Any],
                                                                                                 str | None]]:
    """(panel, the repeat variable in force): a row's repeat covers the panels after it (expanded rows) or in it
    (collapsed rows), until the next row."""
    current = row_repeat
    for panel in panels:
        if panel.get("type") == "row":
            current = panel.get("repeat") or None
            yield from _panels(panel.get("panels") or [], current)
            continue
        yield panel, panel.get("repeat") or current


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every visible target with an expression, in dashboard order."""
    out: list[PanelQuery] = []
    for panel, repeat in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = (target.get("expr") or "").strip()
            if expr and not target.get("hide"):
                out.append(PanelQuery(str(panel.get("title", "")), str(target.get("refId", "")),
                                      str(target.get("legendFormat") or ""), expr, repeat))
    return out


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    out = []
    for v in (dashboard.get("templating") or {}).get("list") or []:
        current = v.get("current") or {}
        value = current.get("value")
        if isinstance(value, list):
            value = value[0] if value else None
        query = v.get("query")
        if isinstance(query, Mapping):  # newer Grafana stores {"query": "...", "refId": ...}
            query = query.get("query", "")
        out.append(Variable(str(v["name"]), str(v.get("type", "query")), str(query or ""),
                            None if value is None else str(value), bool(v.get("multi"))))
    return out


def referenced(expr: str) -> set[str]:
    """Names of the variables `expr` uses (`$x`, `${x}`, `${x:fmt}`, `[[x]]`)."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with every variable in `values` replaced; others are left as they are (see `referenced`)."""

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        return values.get(name, m.group(0))

    return _VARIABLE.sub(one, expr)


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(metric{sel}, label)` -> ("metric{sel}", "label"); `label_values(label)` -> (None, label)."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        raise ValueError(f"not a label_values(...) query: {query!r}")
    return m.group("match"), m.group("label")


def range_seconds(dashboard: Mapping[str, Any]) -> float:
    """The dashboard's time range (`now-30m` .. now) in seconds; 30 min when it is not relative to now."""
    m = _RELATIVE.match(str((dashboard.get("time") or {}).get("from", "")))
    return float(int(m.group(1)) * _UNITS[m.group(2)]) if m else 1800.0


def builtins(range_s: float, rate_interval: str, step_s: float) -> dict[str, str]:
    """Grafana's built-in variables as a panel query sees them."""
    return {"__rate_interval": rate_interval, "__interval": f"{max(1, round(step_s))}s",
            "__range": f"{max(1, round(range_s))}s", "__range_s": str(max(1, round(range_s)))}


def has_data(payload: Mapping[str, Any]) -> bool:
    """A range (or instant) query result with at least one non-NaN point."""
    data = payload.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        return isinstance(result, list) and len(result) == 2 and not math.isnan(float(result[1]))
    for series in result or []:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(not math.isnan(float(p[1])) for p in points):
            return True
    return False


Getter = Callable[[str, Mapping[str, str]], Mapping[str, Any]]


class _Failed(Exception):
    pass


def _http_getter(base_url: str, timeout: float) -> Getter:
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ValueError(f"prometheus URL {base_url!r} is not http(s)")

    def get(path: str, params: Mapping[str, str]) -> Mapping[str, Any]:
        url = base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in a JSON body
            try:
                body = json.loads(exc.read(64 * 1024))
            except ValueError:
                body = {}
            raise _Failed(f"HTTP {exc.code}: {body.get('errorType', '')}: {body.get('error', exc.reason)}") from None
        except (OSError, ValueError) as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise _Failed(f"{payload.get('errorType', 'error')}: {payload.get('error', payload)}")
        return payload

    return get


def resolve_variables(dashboard: Mapping[str, Any], get: Getter, start: float, end: float,
                      overrides: Mapping[str, str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each variable's values (overrides win; query variables through `/api/v1/label/<name>/values`), and why
    a variable has none. Variables are resolved in order, so a later query may use an earlier one."""
    values: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    for v in variables(dashboard):
        if v.name in overrides:
            values[v.name] = [overrides[v.name]]
            continue
        if v.type == "datasource":
            continue  # only chooses the data source; queries never contain it
        if v.type in ("textbox", "constant", "custom", "interval"):
            values[v.name] = [v.default if v.default and v.default != ALL else v.query.split(",")[0]]
            continue
        try:
            match, label = parse_label_values(v.query)
        except ValueError as exc:
            problems[v.name] = str(exc)
            continue
        params = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
        if match is not None:
            unresolved = referenced(match) - set(values)
            if unresolved:
                problems[v.name] = f"depends on {sorted(unresolved)}, which have no value"
                continue
            params["match[]"] = substitute(match, {k: vs[0] for k, vs in values.items()})
        try:
            found = sorted(get(f"/api/v1/label/{label}/values", params).get("data") or [])
        except _Failed as exc:
            problems[v.name] = f"label values failed: {exc}"
            continue
        if not found:
            problems[v.name] = f"no values for {v.query}"
            continue
        all_values = v.multi and (v.default in (None, ALL))
        values[v.name] = found if all_values else [v.default if v.default and v.default in found else found[0]]
    return values, problems


def failing_panels(prometheus_url: str, dashboard_json: Mapping[str, Any] | str, *,
                   variables: Mapping[str, str] | None = None, range_s: float | None = None,
                   rate_interval: str = "1m", step_s: float | None = None,
                   timeout: float = DEFAULT_TIMEOUT_SECONDS, skip: Collection[str] = ()) -> list[str]:
    """`panel [legend] (var=value): why: query` for each panel query that errors or returns nothing.

    `variables` fixes template variables (e.g. {"namespace": "team-a", "lad": "llm"}); the others resolve as
    Grafana resolves them (a repeated row once per value). `range_s` defaults to the dashboard's time range,
    `rate_interval` stands for `$__rate_interval` (at least 4 scrape intervals). An empty list: every panel
    shows data. `skip`: panel titles not checked (e.g. `localattn_cli.dashboard.OPT_IN_PANELS`, which have data
    only where a LAD opts in)."""
    dashboard = json.loads(dashboard_json) if isinstance(dashboard_json, str) else dashboard_json
    get = _http_getter(prometheus_url, timeout)
    end = time.time()
    span = range_s if range_s is not None else range_seconds(dashboard)
    start = end - span
    step = step_s if step_s is not None else max(2.0, span / 200)
    values, problems = resolve_variables(dashboard, get, start, end, variables or {})
    fixed = builtins(span, rate_interval, step)
    failures: list[str] = []
    for q in panel_queries(dashboard):
        if q.panel in skip:
            continue
        repeats: list[str | None] = [*values[q.repeat]] if q.repeat in values else [None]
        for value in repeats:
            where = f" ({q.repeat}={value})" if q.repeat and value is not None else ""
            chosen = {k: vs[0] for k, vs in values.items()} | fixed | ({q.repeat: value} if q.repeat and value else {})
            missing = referenced(q.expr) - set(chosen)
            if missing:
                why = "; ".join(f"${n}: {problems.get(n, 'unknown variable')}" for n in sorted(missing))
                failures.append(f"{q.label()}{where}: unresolved variable {why}: {q.expr}")
                continue
            expr = substitute(q.expr, chosen)
            try:
                payload = get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                      "step": f"{step:g}", "timeout": f"{max(1, round(timeout))}s"})
            except _Failed as exc:
                failures.append(f"{q.label()}{where}: error: {exc}: {expr}")
                continue
            if not has_data(payload):
                failures.append(f"{q.label()}{where}: no data in the last {span:g}s: {expr}")
    return failures
