"""The Prometheus metrics provider: the named PromQL templates run as instant queries (`/api/v1/query`).

Synchronous on purpose: `MetricsProvider.query` is synchronous and the executor calls it off the API threads
and outside the LAD's lock, so blocking here holds nothing else up. Every request has a timeout (connect and
read together), and every way Prometheus can fail to answer (unreachable, timeout, HTTP error, an error
response, bad JSON, several series where the template aggregates to one) is a `ProviderError`: an Error
gate in an Inconclusive window (held), never a Failure. An empty result or NaN is *no data* (None): missing data, which the spec's
`missingData` policy judges.

The query runs at the window's end (`at`) when the executor knows it, so a measurement taken a little late
still covers `[end - window, end)` as the canary's verdict was planned; `at=None` is Prometheus' "now".
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from localattn_operator.metrics_provider import ProviderError, promql

DEFAULT_TIMEOUT_SECONDS = 10.0
_MAX_BODY = 8 * 1024 * 1024  # an instant query of one aggregated series is tiny; refuse to buffer a runaway one


@dataclass
class PrometheusProvider:
    """`url` is Prometheus' base URL (`http://prometheus:9090`, optionally with a path prefix).

    Not frozen: `MetricsProvider.name` is a plain attribute in the protocol (mypy wants it settable)."""

    url: str
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    at: datetime | None = None
    name: str = "prometheus"

    def for_window(self, end: datetime) -> PrometheusProvider:
        """The same provider evaluating at `end` (the window's end: `AnalysisRequest.end`)."""
        return replace(self, at=end)

    def query(self, template_name: str, params: Mapping[str, str], window_seconds: float) -> float | None:
        return self.instant(promql(template_name, params, window_seconds))

    def instant(self, expr: str) -> float | None:
        """Run one instant query that must yield at most one value."""
        return single_value(self._get("/api/v1/query", self._query_params(expr)), expr)

    def _query_params(self, expr: str) -> dict[str, str]:
        params = {"query": expr, "timeout": f"{max(1, math.ceil(self.timeout))}s"}  # Prometheus stops too
        if self.at is not None:
            params["time"] = f"{self.at.timestamp():.3f}"
        return params

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise ProviderError(f"prometheus URL {self.url!r} is not http(s)")  # urllib would open file:// too
        url = self.url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422/503 with a JSON error body: keep its message, it names the problem.
            detail = _error_detail(exc.read(64 * 1024))
            raise ProviderError(f"prometheus {self.url}: HTTP {exc.code}{detail}") from None
        except TimeoutError as exc:
            raise ProviderError(f"prometheus {self.url}: no answer within {self.timeout:g}s") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise ProviderError(f"prometheus {self.url}: no answer within {self.timeout:g}s") from exc
            raise ProviderError(f"prometheus {self.url}: unreachable ({reason})") from exc
        except (OSError, ValueError) as exc:  # reset connections, malformed URLs, http.client errors
            raise ProviderError(f"prometheus {self.url}: {type(exc).__name__}: {exc}") from exc
        if len(body) > _MAX_BODY:
            raise ProviderError(f"prometheus {self.url}: response larger than {_MAX_BODY} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ProviderError(f"prometheus {self.url}: response is not JSON ({exc})") from exc


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()[:200]
        return f": {text}" if text else ""
    if isinstance(data, dict) and data.get("error"):
        return f": {data.get('errorType', 'error')}: {data['error']}"
    return ""


def _sample_value(pair: Any, expr: str) -> float | None:
    if not isinstance(pair, list) or len(pair) != 2:
        raise ProviderError(f"malformed sample {pair!r} for {expr}")
    try:
        value = float(pair[1])
    except (TypeError, ValueError):
        raise ProviderError(f"malformed sample value {pair[1]!r} for {expr}") from None
    return None if math.isnan(value) else value


def single_value(payload: Any, expr: str) -> float | None:
    """The one value of an instant-query response (`{"status": "success", "data": {...}}`), or None.

    None for an empty vector or NaN (0/0 rates, an empty histogram); ProviderError for an error response, a
    malformed one, or more than one series (every template aggregates to one: several mean the selector or
    the template is wrong, and picking one would be a silent lie)."""
    if not isinstance(payload, dict):
        raise ProviderError(f"unexpected response {str(payload)[:200]!r} for {expr}")
    if payload.get("status") != "success":
        raise ProviderError(f"{payload.get('errorType', 'error')}: {payload.get('error', 'no status')} for {expr}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ProviderError(f"response without data for {expr}")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _sample_value(result, expr)
    if kind != "vector" or not isinstance(result, list):
        raise ProviderError(f"expected a vector, got {kind!r} for {expr}")
    if not result:
        return None
    if len(result) > 1:
        labels = [r.get("metric", {}) if isinstance(r, dict) else r for r in result[:3]]
        raise ProviderError(f"{len(result)} series where one was expected for {expr} (e.g. {labels})")
    series = result[0]
    if not isinstance(series, dict):
        raise ProviderError(f"malformed series {series!r} for {expr}")
    return _sample_value(series.get("value"), expr)
