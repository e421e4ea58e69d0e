"""Measuring a window for the executor: which provider, and what no provider or a dead one means."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from localattn_operator.analysis import AnalysisRequest
from localattn_operator.measure import measure, provider_for
from localattn_operator.models import RolloutStatus
from localattn_operator.providers.prometheus import PrometheusProvider
from localattn_operator.validation import validate_spec

SPEC: dict[str, Any] = {"model": {"uri": "pvc://models/llama"}, "replicas": 2, "rollout": {"steps": [{"setWeight": 50}]}}
END = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = AnalysisRequest("canary", END - timedelta(seconds=60), END, "stable1", "canary1", 0)


def test_without_a_provider_every_figure_is_missing_data_which_holds() -> None:
    spec = validate_spec(SPEC)
    assert provider_for(spec, REQUEST, None) is None
    verdict = measure(REQUEST, spec, RolloutStatus(), "ns", "llm", None)
    assert verdict.request == REQUEST and verdict.phase == "Inconclusive"
    assert all(g.phase == "Inconclusive" and "missing data" in g.message for g in verdict.gates)
    failing = validate_spec({**SPEC, "analysis": {"missingData": "fail"}})
    assert measure(REQUEST, failing, RolloutStatus(), "ns", "llm", None).phase == "Failed"


def test_the_operator_setting_is_the_default_prometheus_and_the_spec_wins() -> None:
    provider = provider_for(validate_spec(SPEC), REQUEST, "http://127.0.0.1:9090")
    assert isinstance(provider, PrometheusProvider) and provider.at == END and provider.url == "http://127.0.0.1:9090"
    own = validate_spec({**SPEC, "analysis": {"provider": {"prometheus": {"url": "http://127.0.0.1:9999"}}}})
    chosen = provider_for(own, REQUEST, "http://127.0.0.1:9090")
    assert isinstance(chosen, PrometheusProvider) and chosen.url == "http://127.0.0.1:9999"


def test_an_unreachable_prometheus_is_an_error_never_a_failure() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    verdict = measure(REQUEST, validate_spec(SPEC), RolloutStatus(), "ns", "llm", f"http://127.0.0.1:{port}")
    assert verdict.phase == "Error" and all(g.phase == "Error" for g in verdict.gates)


def test_the_scrape_provider_reads_the_ready_pods_of_both_arms() -> None:
    from localattn_operator.metrics_provider import FirstAvailable
    from localattn_operator.observe import Inventory, scrape_targets
    from localattn_operator.providers.scrape import ScrapeProvider
    from localattn_operator.providers.scrape_eval import ScrapeState

    def pod(name: str, track: str, revision: str, ready: bool) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"localattn.dev/track": track, "localattn.dev/revision": revision},
                             "annotations": {"prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}},
                "status": {"podIP": f"127.1.1.{len(name)}",
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    def arm(revision: str) -> dict[str, Any]:
        return {"metadata": {"name": "x"}, "spec": {"template": {"metadata": {"labels": {"localattn.dev/revision": revision}}}}}

    inv = Inventory(arms={"stable": arm("s1"), "canary": arm("c1")},  # type: ignore[dict-item]
                    pods=[pod("a", "stable", "s1", True), pod("bb", "stable", "s1", False), pod("ccc", "canary", "c1", True),
                          pod("dddd", "stable", "old", True)])
    targets = scrape_targets(inv)
    assert {rev: [t.url for t in ts] for rev, ts in targets.items()} == {
        "s1": ["http://127.1.1.1:8000/metrics"], "c1": ["http://127.1.1.3:8000/metrics"]}
    scrape = ScrapeProvider(targets, ScrapeState())
    both = validate_spec({**SPEC, "analysis": {"provider": {"prometheus": {"url": "http://127.0.0.1:9"}, "scrape": {}}}})
    chosen = provider_for(both, REQUEST, None, scrape)
    assert isinstance(chosen, FirstAvailable) and chosen.providers[1] is scrape
    only = validate_spec({**SPEC, "analysis": {"provider": {"scrape": {}}}})
    assert provider_for(only, REQUEST, "http://127.0.0.1:9090", scrape) is scrape  # the setting is not forced on it
