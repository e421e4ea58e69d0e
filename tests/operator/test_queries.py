"""PromQL templates: strict rendering, the arm selector, and the metric names the installed vLLM exports."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from localattn_operator import queries
from localattn_operator.metrics_provider import _ARM_FIELDS, _BUCKET_FIELDS, promql


def test_render_fills_every_placeholder() -> None:
    text = promql("p95_e2e", {"namespace": "ns", "lad": "llm", "revision": "4ab29fa9c5"}, 60)
    assert text == ('histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket'
                    '{lad="llm",namespace="ns",revision="4ab29fa9c5"}[60s])))')
    assert "$" not in text


def test_bucket_queries_select_the_length_bucket() -> None:
    text = promql("bucket_p95_e2e", {"namespace": "ns", "lad": "llm", "revision": "r", "bucket": "512-2048"}, 90)
    assert 'length_bucket="512-2048"' in text and "localattn_request_latency_seconds_bucket" in text


@pytest.mark.parametrize(("params", "match"), [
    ({"sel": 'lad="x"'}, "missing"),  # no window
    ({"sel": 'lad="x"', "window": "60s", "bucket": "0-512"}, "unexpected"),
    ({"sel": 'lad="x"', "window": "1 minute"}, "window"),
])
def test_render_is_strict(params: dict[str, str], match: str) -> None:
    with pytest.raises(queries.QueryError, match=match):
        queries.render("p95_ttft", params)


def test_unknown_template_and_bad_label_names_are_errors() -> None:
    with pytest.raises(queries.QueryError, match="unknown"):
        queries.render("p99", {})
    with pytest.raises(queries.QueryError):
        queries.selector({"bad-name": "x"})
    with pytest.raises(queries.QueryError):
        queries.selector({})


def test_label_values_are_escaped() -> None:
    assert queries.selector({"lad": 'a"b\\c'}) == 'lad="a\\"b\\\\c"'


def test_every_template_renders_and_is_balanced() -> None:
    for name in queries.TEMPLATES:
        params = {"namespace": "ns", "lad": "l", "revision": "r"}
        if "bucket" in queries.placeholders(name):
            params["bucket"] = "0-512"
        text = promql(name, params, 30)
        assert text.count("(") == text.count(")") and text.count("{") == text.count("}"), name
    assert set(_ARM_FIELDS) | set(_BUCKET_FIELDS) <= set(queries.TEMPLATES)


def test_bucket_labels_and_defaults_follow_the_window() -> None:
    assert queries.default_bucket_boundaries(512) == [512, 2048]
    assert queries.bucket_labels([512, 2048]) == ["0-512", "512-2048", "2048-inf"]
    assert queries.bucket_labels([]) == ["0-inf"]


def test_vllm_metric_names_exist_in_the_installed_vllm() -> None:
    """The histogram and counter names the templates use are those vLLM 0.32 registers."""
    spec = importlib.util.find_spec("vllm")  # not imported: its import is slow
    assert spec is not None and spec.submodule_search_locations
    source = (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()
    used = set()
    for template in queries.TEMPLATES.values():
        used |= set(re.findall(r"vllm:([a-z_]+?)(?:_bucket|_count|_total)?\{", template))
    assert used, "no vLLM metric found in the templates"
    for name in used:
        assert f'"vllm:{name}"' in source, name


def test_runtime_metric_names_match_the_runtime() -> None:
    source = (Path(__file__).resolve().parents[2] / "runtime" / "localattn_runtime" / "metrics.py").read_text()
    for name in (queries.PROBE_PERPLEXITY_METRIC, queries.PROBE_EXACT_MATCH_METRIC, queries.PROBE_AGE_METRIC):
        assert f'"{name}"' in source, name
