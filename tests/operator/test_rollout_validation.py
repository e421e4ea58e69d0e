"""Cross-field rules of the rollout API, and a fuzz of whole rollout/analysis specs (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localattn_operator.revision import revision_of
from localattn_operator.rollout import ArmObservation, Observation, step
from localattn_operator.validation import SpecError, validate_spec

BASE: dict[str, Any] = {"model": {"uri": "pvc://models/llm"}, "replicas": 4, "runtime": {"maxModelLen": 8192},
                        "localAttention": {"windowSize": 512}}


def problems(**extra: Any) -> list[str]:
    try:
        validate_spec({**BASE, **extra})
    except SpecError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"rollout": {"steps": [{"setWeight": 50}, {"setWeight": 25}]}},
         "spec.rollout.steps[1].setWeight (25) must be greater than steps[0].setWeight (50)"),
        ({"rollout": {"steps": [{"setWeight": 20}, {"setWeight": 20}]}}, "spec.rollout.steps[1].setWeight (20)"),
        ({"rollout": {"steps": [{"setWeight": 101}]}}, "spec.rollout.steps.0.setWeight"),  # the schema's range
        ({"rollout": {"steps": [{"setWeight": 0}]}}, "spec.rollout.steps.0.setWeight"),
        ({"rollout": {"steps": [{}]}}, "spec.rollout.steps[0]: set exactly one of setWeight or pause"),
        ({"rollout": {"steps": [{"setWeight": 10, "pause": {}}]}}, "spec.rollout.steps[0]: set exactly one"),
        ({"rollout": {"steps": [{"pause": {"duration": "0s"}}]}}, "spec.rollout.steps[0].pause.duration (0s)"),
        ({"rollout": {"steps": [{"pause": {"duration": "5 minutes"}}]}}, "spec.rollout.steps.0.pause.duration"),
        ({"rollout": {"steps": [{"pause": {}, "analysisInterval": "1m"}]}},
         "spec.rollout.steps[0].analysisInterval: only a setWeight step is analysed"),
        ({"rollout": {"steps": [{"setWeight": 10, "analysisInterval": "5s"}]}},
         "spec.rollout.steps[0].analysisInterval (5s) must be at least 10s"),
        ({"analysis": {"interval": "1s"}}, "spec.analysis.interval (1s) must be at least 10s"),
        ({"rollout": {"maxSurge": "lots"}}, "spec.rollout.maxSurge: maxSurge must be a pod count or a percentage"),
        ({"replicas": 1, "rollout": {"maxSurge": 0}}, "spec.rollout.maxSurge: 0 with spec.replicas 1 leaves no pod"),
        ({"replicas": 1, "rollout": {"maxSurge": 0, "router": {"gatewayAPI": {"httpRoute": "r"}}}},
         "spec.rollout.maxSurge: 0 with spec.replicas 1"),
        ({"rollout": {"postPromotionGuard": "10m"}, "probe": {"enabled": True}},
         "spec.rollout.postPromotionGuard: nothing to guard"),
        ({"rollout": {"router": {"gatewayAPI": {}}}}, "spec.rollout.router.gatewayAPI.httpRoute"),
        ({"rollout": {"router": {"gatewayAPI": {"httpRoute": "r", "namespace": "other"}}}},
         "spec.rollout.router.gatewayAPI.namespace"),  # another namespace's route: not offered
        ({"rollout": {"postPromotionGuard": "10m"}}, "spec.rollout.postPromotionGuard: the guard watches the quality"),
        ({"analysis": {"thresholds": {"maxPerplexityRatio": 1.1}}},
         "spec.analysis.thresholds.maxPerplexityRatio: no metric source; set spec.probe.enabled"),
        ({"analysis": {"thresholds": {"maxExactMatchDrop": 0.1}}}, "spec.analysis.thresholds.maxExactMatchDrop"),
        ({"analysis": {"thresholds": {"minAgreement": 0.9}}},
         "spec.analysis.thresholds.minAgreement: no metric source; set spec.pairedComparison.enabled"),
        ({"analysis": {"lengthBuckets": [512, 512]}}, "spec.analysis.lengthBuckets[1] (512) must be greater"),
        ({"analysis": {"lengthBuckets": [512, 9000]}}, "spec.analysis.lengthBuckets[1] (9000) is not below"),
        ({"analysis": {"provider": {"prometheus": {"url": "prometheus:9090"}}}},
         "spec.analysis.provider.prometheus.url: must be an http(s):// URL"),
        ({"probe": {"enabled": True, "goldenSet": {"name": "Bad_Name", "key": "k"}}}, "spec.probe.goldenSet.name"),
        ({"probe": {"enabled": True, "goldenSet": {"name": "a.-b", "key": "k"}}}, "spec.probe.goldenSet.name"),
        ({"analysis": {"missingData": "ignore"}}, "spec.analysis.missingData"),
        ({"cost": {"gpuHourPrice": 0}}, "spec.cost.gpuHourPrice"),
    ],
)
def test_contradictions_are_rejected_naming_the_field(extra: dict[str, Any], expected: str) -> None:
    found = problems(**extra)
    assert any(p.startswith(expected) for p in found), found


def test_a_full_rollout_spec_is_accepted() -> None:
    assert problems(
        rollout={"steps": [{"setWeight": 10, "analysisInterval": "2m"}, {"pause": {"duration": "5m"}},
                           {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
                 "maxSurge": 0, "postPromotionGuard": "30m",
                 "router": {"gatewayAPI": {"httpRoute": "llm", "backendKind": "InferencePool",
                                           "endpointPicker": {"name": "epp"}}}},
        analysis={"thresholds": {"maxPerplexityRatio": 1.05, "maxExactMatchDrop": 0.05,
                                 "minCostSavingPercent": 10, "maxLatencyRegressionPercent": {"ttft": None}},
                  "lengthBuckets": [512, 2048], "provider": {"prometheus": {"url": "http://prom:9090"}, "scrape": {}}},
        cost={"gpuHourPrice": 2.5, "currency": "EUR"},
        probe={"enabled": True, "goldenSet": {"name": "golden", "key": "set.json"}},
        pairedComparison={"enabled": False, "prompts": {"name": "prompts", "key": "p.txt"}},
    ) == []


def test_the_paired_comparison_needs_prompts_and_the_agreement_floor_needs_the_comparison() -> None:
    assert problems(pairedComparison={"enabled": True}) == [
        "spec.pairedComparison.enabled: no prompts; set spec.probe.goldenSet or spec.pairedComparison.prompts"]
    assert problems(pairedComparison={"enabled": True, "prompts": {"name": "p", "key": "k"}}) == []
    assert problems(probe={"enabled": True, "goldenSet": {"name": "g", "key": "k"}},
                    pairedComparison={"enabled": True}) == []
    assert problems(analysis={"thresholds": {"minAgreement": 0.9}}) == [
        "spec.analysis.thresholds.minAgreement: no metric source; set spec.pairedComparison.enabled"]


def test_a_prometheus_url_with_credentials_is_refused_without_echoing_them() -> None:
    (problem,) = problems(analysis={"provider": {"prometheus": {"url": "http://admin:s3cret@prom:9090"}}})
    assert problem.startswith("spec.analysis.provider.prometheus.url: must not carry credentials")
    assert "s3cret" not in problem


def test_an_indefinite_pause_is_valid_it_is_always_resumable() -> None:
    assert problems(rollout={"steps": [{"pause": {}}, {"setWeight": 50}, {"pause": {}}]}) == []


def test_rollout_settings_do_not_change_the_revision() -> None:
    plain = revision_of(validate_spec(BASE))
    tuned = validate_spec({**BASE, "rollout": {"steps": [{"setWeight": 5}]}, "cost": {"gpuHourPrice": 1},
                           "analysis": {"interval": "2m"}, "pairedComparison": {"maxPrompts": 8}})
    assert revision_of(tuned) == plain


# --- fuzz ---------------------------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=6),
                 st.lists(st.integers(-1, 5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
durations = st.one_of(st.sampled_from(["0s", "5s", "10s", "30s", "1m", "1h30m", "2h", "", "1d", "m"]), junk)


def maybe(d: dict[str, Any]) -> Any:
    return st.fixed_dictionaries({}, optional=d)


step_s = maybe({"setWeight": st.one_of(st.integers(-1, 101), junk),
                "pause": st.one_of(maybe({"duration": durations}), junk), "analysisInterval": durations})
rollout_s = maybe({
    "steps": st.one_of(st.lists(step_s, max_size=6), junk),
    "maxSurge": st.one_of(st.integers(-1, 10), st.sampled_from(["0%", "25%", "100%", "150%", "x", "3"]), junk),
    "progressDeadlineSeconds": st.one_of(st.integers(0, 100000), junk),
    "router": st.one_of(maybe({"gatewayAPI": st.one_of(maybe({"httpRoute": st.text(max_size=5),
                                                             "backendKind": st.sampled_from(["Service", "X"])}), junk)}),
                        junk),
    "postPromotionGuard": durations, "revisionHistoryLimit": st.one_of(st.integers(-1, 60), junk),
})
thresholds_s = maybe({
    "maxLatencyRegressionPercent": maybe({"e2e": st.one_of(st.floats(-1, 2000), st.none()),
                                          "ttft": st.floats(-1, 50), "itl": junk}),
    "maxErrorRate": st.one_of(st.floats(-0.5, 1.5), junk), "maxPerplexityRatio": st.one_of(st.floats(0, 200), junk),
    "maxExactMatchDrop": st.floats(-1, 2), "minAgreement": st.floats(-1, 2), "minCostSavingPercent": st.floats(-200, 200),
})
analysis_s = maybe({
    "interval": durations, "thresholds": st.one_of(thresholds_s, junk), "minRequests": st.integers(-1, 100),
    "failureLimit": st.one_of(st.integers(-1, 200), junk), "inconclusiveLimit": st.integers(-1, 200),
    "consecutiveErrorLimit": st.integers(-1, 200), "missingData": st.sampled_from(["inconclusive", "fail", "x"]),
    "provider": maybe({"prometheus": maybe({"url": st.sampled_from(["http://p:9090", "p", ""])}), "scrape": junk}),
    "lengthBuckets": st.one_of(st.lists(st.integers(-10, 20000), max_size=4), junk),
})
extra_s = maybe({
    "rollout": st.one_of(rollout_s, junk), "analysis": st.one_of(analysis_s, junk),
    "cost": maybe({"gpuHourPrice": st.floats(-1, 10), "currency": st.text(max_size=10)}),
    "probe": maybe({"enabled": st.booleans(), "intervalSeconds": st.integers(0, 100),
                    "goldenSet": maybe({"name": st.text(max_size=5), "key": st.just("k")})}),
    "pairedComparison": maybe({"enabled": st.booleans(), "maxPrompts": st.integers(-1, 2000)}),
    "replicas": st.integers(-1, 12),
})
SECTIONS = ("spec.rollout", "spec.analysis", "spec.cost", "spec.probe", "spec.pairedComparison", "spec.replicas")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra_s)
def test_fuzz_no_input_crashes_and_every_rejection_names_its_field(extra: dict[str, Any]) -> None:
    raw = {**BASE, **extra}
    try:
        spec = validate_spec(raw)
    except SpecError as exc:
        assert exc.problems
        for message in exc.problems:
            assert message.startswith(SECTIONS), message
        return
    # an accepted spec drives the state machine without an exception, from nothing and mid-rollout
    now = datetime(2026, 12, 1, tzinfo=UTC)
    d = step(None, Observation("a", ArmObservation("a", 4, 4, 4)), spec, now)
    d = step(d.status, Observation("b", ArmObservation("a", 4, 4, 4), None), spec, now)
    step(d.status, Observation("b", ArmObservation("a", 4, 4, 4), ArmObservation("b", 1, 1, 1)), spec, now)


def test_with_autoscaling_the_lowest_count_is_min_replicas() -> None:
    """The operator itself may scale spec.replicas down to minReplicas; judged on spec.replicas alone, its own
    scale-down to 1 would turn a maxSurge-0 canary spec invalid mid-flight."""
    from localattn_operator.rollout_validation import rollout_problems
    from localattn_operator.validation import validate_spec

    base = {"model": {"uri": "pvc://models/llama"}, "replicas": 3,
            "rollout": {"steps": [{"setWeight": 50}], "maxSurge": 0}}
    assert not [p for p in rollout_problems(validate_spec(base)) if "maxSurge" in p]
    scaled = {**base, "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targets": {"waitingRequestsPerReplica": 2}}}
    from localattn_operator.validation import SpecError
    try:
        problems = rollout_problems(validate_spec(scaled))
    except SpecError as exc:
        problems = exc.problems
    assert any("spec.autoscaling.minReplicas 1 leaves no pod for stable" in p for p in problems), problems


def test_inference_pool_backends_need_an_endpoint_picker() -> None:
    route = {"httpRoute": "llm", "backendKind": "InferencePool"}
    assert problems(rollout={"router": {"gatewayAPI": route}}) == [
        "spec.rollout.router.gatewayAPI.endpointPicker: backendKind InferencePool needs endpointPicker (the pools' "
        "spec.endpointPickerRef)"]
    assert problems(rollout={"router": {"gatewayAPI": {**route, "endpointPicker": {"name": "epp"}}}}) == []
