"""Measuring a window for the executor: which provider, and what no provider or a dead one means."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from localattn_operator.analysis import AnalysisRequest
from localattn_operator.autoscaling_signals import ReplicaSample
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


def test_an_unreachable_prometheus_is_inconclusive_never_a_failure() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    verdict = measure(REQUEST, validate_spec(SPEC), RolloutStatus(), "ns", "llm", f"http://127.0.0.1:{port}")
    assert verdict.phase == "Inconclusive" and verdict.provider_error and all(g.phase == "Error" for g in verdict.gates)


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


def test_the_load_is_measured_per_arm_through_the_same_providers() -> None:
    """measure_load asks queries.LOAD_TEMPLATES per arm of ready pods (p95s only for the targets that need
    them) and turns the sums into per-pod samples; a failing query is missing data, never zero load."""
    from collections.abc import Mapping

    from localattn_operator.measure import measure_load
    from localattn_operator.metrics_provider import ProviderError

    answers = {("stable1", "pods_reporting"): 2.0, ("stable1", "waiting_total"): 6.0, ("stable1", "running_total"): 4.0,
               ("stable1", "kv_usage_total"): 0.4, ("stable1", "p95_e2e"): 3.0,
               ("canary1", "pods_reporting"): 1.0, ("canary1", "waiting_total"): 1.0}
    asked: list[tuple[str, str, float]] = []

    class Fake:
        name = "fake"

        def query(self, template: str, params: Mapping[str, str], window_seconds: float) -> float | None:
            asked.append((params["revision"], template, window_seconds))
            if (params["revision"], template) == ("canary1", "running_total"):
                raise ProviderError("down")
            return answers.get((params["revision"], template))

    spec = validate_spec({**SPEC, "analysis": {"provider": {"scrape": {}}},
                          "autoscaling": {"maxReplicas": 4, "targets": {"p95LatencySeconds": 2}}})
    samples = measure_load(spec, "ns", "llm", {"stable1": 2, "canary1": 1, "gone": 0}, 30, None, Fake())
    assert {r for r, _, _ in asked} == {"stable1", "canary1"} and {w for _, _, w in asked} == {30}
    assert {t for _, t, _ in asked} == {"pods_reporting", "waiting_total", "running_total", "kv_usage_total", "p95_e2e"}
    assert [(s.waiting, s.running) for s in samples.replicas] == [(1.0, None), (3.0, 2.0), (3.0, 2.0)]
    assert samples.p95_latency_seconds == 3.0 and samples.p95_ttft_seconds is None
    assert measure_load(validate_spec(SPEC), "ns", "llm", {"stable1": 2}, 30, None).replicas == \
        (ReplicaSample(), ReplicaSample())  # no provider: every pod missing, the decision holds
