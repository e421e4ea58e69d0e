"""Cross-field rules of `spec.rollout`, `spec.analysis`, `spec.probe` and `spec.pairedComparison` (pure).

What the schema states (weights 1..100, duration syntax, enums, a gatewayAPI router's route name) is rejected
by `kubectl apply`; this module finds what only the combination makes contradictory. Every message names the
field path as the user wrote it (camelCase).

Not a rule, deliberately: an indefinite pause (`pause: {}`) is always resumable through the
`localattn.dev/resume` and `localattn.dev/promote` annotations, so it never leaves a rollout without a way on.
"""

from __future__ import annotations

import re

from localattn_operator.duration import parse_duration
from localattn_operator.models import LocalAttnDeploymentSpec
from localattn_operator.names import is_dns_subdomain
from localattn_operator.weights import resolve_surge

MIN_ANALYSIS_SECONDS = 10  # a rate() needs two scrapes inside the window


def _duration_problem(path: str, text: str | None, minimum: int = 1) -> str | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        return f"{path}: {exc}"
    if seconds < minimum:
        return f"{path} ({text}) must be at least {minimum}s"
    return None


def rollout_problems(spec: LocalAttnDeploymentSpec) -> list[str]:
    problems: list[str] = []
    ro = spec.rollout
    if ro is not None:
        previous: tuple[int, int] | None = None
        for i, s in enumerate(ro.effective_steps()):
            path = f"spec.rollout.steps[{i}]"
            if (s.set_weight is None) == (s.pause is None):
                problems.append(f"{path}: set exactly one of setWeight or pause")
            if s.pause is not None:
                if s.analysis_interval is not None:
                    problems.append(f"{path}.analysisInterval: only a setWeight step is analysed")
                problems.append(_duration_problem(f"{path}.pause.duration", s.pause.duration) or "")
            problems.append(_duration_problem(f"{path}.analysisInterval", s.analysis_interval, MIN_ANALYSIS_SECONDS) or "")
            if s.set_weight is not None:
                if previous is not None and s.set_weight <= previous[1]:
                    problems.append(
                        f"{path}.setWeight ({s.set_weight}) must be greater than steps[{previous[0]}].setWeight "
                        f"({previous[1]}): weights only increase"
                    )
                previous = (i, s.set_weight)
        try:
            surge = resolve_surge(ro.max_surge, spec.replicas)
        except ValueError as exc:
            problems.append(f"spec.rollout.maxSurge: {exc}")
            surge = None
        weights = [s.set_weight for s in ro.effective_steps() if s.set_weight is not None and s.set_weight < 100]
        # With spec.autoscaling the operator may set spec.replicas down to minReplicas: judge that count, so its
        # own scale-down never turns the spec invalid.
        lowest, what = (spec.autoscaling.min_replicas, "spec.autoscaling.minReplicas") \
            if spec.autoscaling is not None else (spec.replicas, "spec.replicas")
        if surge == 0 and lowest == 1 and weights:
            problems.append(
                f"spec.rollout.maxSurge: 0 with {what} 1 leaves no pod for stable once the canary runs: it "
                f"would take all traffic at setWeight {weights[0]}; allow a surge or add replicas"
            )
        problems.append(_duration_problem("spec.rollout.postPromotionGuard", ro.post_promotion_guard) or "")
        gateway = ro.router.gateway_api
        if gateway is not None and gateway.backend_kind == "InferencePool" and gateway.endpoint_picker is None:
            problems.append("spec.rollout.router.gatewayAPI.endpointPicker: backendKind InferencePool needs "
                            "endpointPicker (the pools' spec.endpointPickerRef)")
        t = spec.analysis.thresholds
        if ro.post_promotion_guard is not None and not spec.probe.enabled:
            problems.append("spec.rollout.postPromotionGuard: the guard watches the quality probe; set spec.probe.enabled")
        elif ro.post_promotion_guard is not None and t.max_perplexity_ratio is None and t.max_exact_match_drop is None:
            problems.append(
                "spec.rollout.postPromotionGuard: nothing to guard; set spec.analysis.thresholds.maxPerplexityRatio "
                "or maxExactMatchDrop"
            )
    problems += _analysis_problems(spec)
    return [p for p in problems if p]


def _analysis_problems(spec: LocalAttnDeploymentSpec) -> list[str]:
    problems: list[str] = []
    a, t = spec.analysis, spec.analysis.thresholds
    problems.append(_duration_problem("spec.analysis.interval", a.interval, MIN_ANALYSIS_SECONDS) or "")
    for name, value in (("maxPerplexityRatio", t.max_perplexity_ratio), ("maxExactMatchDrop", t.max_exact_match_drop)):
        if value is not None and not spec.probe.enabled:
            problems.append(f"spec.analysis.thresholds.{name}: no metric source; set spec.probe.enabled")
    if spec.paired_comparison.enabled and spec.probe.golden_set is None and spec.paired_comparison.prompts is None:
        # The runtime's built-in golden set lives in the runtime image, out of the operator's reach.
        problems.append("spec.pairedComparison.enabled: no prompts; set spec.probe.goldenSet or "
                        "spec.pairedComparison.prompts")
    if t.min_agreement is not None and not spec.paired_comparison.enabled:
        problems.append("spec.analysis.thresholds.minAgreement: no metric source; set spec.pairedComparison.enabled")
    url = a.provider.prometheus.url if a.provider.prometheus is not None else None
    if url is not None and re.match(r"^https?://[^\s/@]*@", url):
        # Not echoed: the userinfo is a credential, and secrets are passed by reference only.
        problems.append("spec.analysis.provider.prometheus.url: must not carry credentials (user:password@)")
    elif url is not None and not re.match(r"^https?://[^\s/]+", url):
        problems.append(f"spec.analysis.provider.prometheus.url: must be an http(s):// URL, got {url!r}")
    buckets = a.length_buckets
    if buckets is not None:
        for i, edge in enumerate(buckets):
            if edge < 1:
                problems.append(f"spec.analysis.lengthBuckets[{i}] ({edge}) must be at least 1 token")
            elif i and edge <= buckets[i - 1]:
                problems.append(f"spec.analysis.lengthBuckets[{i}] ({edge}) must be greater than the one before")
            max_len = spec.runtime.max_model_len
            if max_len is not None and edge >= max_len:
                problems.append(
                    f"spec.analysis.lengthBuckets[{i}] ({edge}) is not below spec.runtime.maxModelLen ({max_len}): "
                    "the bucket above it can never fill"
                )
    for path, ref in (("spec.probe.goldenSet", spec.probe.golden_set),
                      ("spec.pairedComparison.prompts", spec.paired_comparison.prompts)):
        if ref is not None and not is_dns_subdomain(ref.name):
            problems.append(f"{path}.name: {ref.name!r} is not a valid ConfigMap name")
    return problems
