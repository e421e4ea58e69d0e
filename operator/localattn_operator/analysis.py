"""Analysis verdicts: canary vs stable over the same window -> a phase per gate and overall (pure).

Argo Rollouts' semantics, with provider errors made explicit: a gate is Successful, Failed, Inconclusive
(missing data: no series, too few requests; or Failed, as `spec.analysis.missingData` says) or Error (the
provider could not answer its query). A window is Failed if any gate failed (a real failure beats an
unanswerable query), else Inconclusive if any gate errored or lacked data, else Successful: provider errors
are never failures, and never a pass. The counters live in status, so a restarted operator continues
counting: failures beyond `failureLimit` and charged inconclusive windows beyond `inconclusiveLimit` roll
back; a provider-error window holds for free up to `consecutiveErrorLimit` in a row, each one beyond counts
as missing data.

Local attention only differs past the window, so latency and quality are also compared per prompt-length
bucket; any bucket beyond its threshold fails the whole measurement, even when the aggregate passes. A bucket
with too few requests in either arm is not judged (the aggregate still needs enough of them: never promote
blindly). Every gate carries its numbers (canary, stable, threshold) for events and status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from localattn_operator.models import (
    BUCKET_ALL,
    AnalysisCounters,
    AnalysisSpec,
    ArmAnalysisStatus,
    BucketFiguresStatus,
    GatePhase,
    GateStatus,
    LastAnalysisStatus,
    MeasurementPhase,
    PairedFiguresStatus,
)

FIGURES = ("requests", "p95_e2e", "p95_ttft", "p95_itl", "error_rate", "tokens_per_gpu_second",
           "cost_per_million", "probe_perplexity", "probe_exact_match")
Outcome = Literal["advance", "hold", "rollback"]


@dataclass(frozen=True)
class Figures:
    """One arm over one window, or one length bucket of it; None: no data."""

    requests: float | None = None
    p95_e2e: float | None = None
    p95_ttft: float | None = None
    p95_itl: float | None = None
    error_rate: float | None = None
    tokens_per_gpu_second: float | None = None
    cost_per_million: float | None = None
    probe_perplexity: float | None = None
    probe_exact_match: float | None = None


@dataclass(frozen=True)
class ArmFigures:
    revision: str
    total: Figures = field(default_factory=Figures)
    buckets: Mapping[str, Figures] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)  # figure (or "bucket/figure") -> provider error


@dataclass(frozen=True)
class PairedFigures:
    """Same prompts, greedy, one stable and one canary pod (the operator measures it itself)."""

    bucket: str = BUCKET_ALL
    prompts: int = 0
    agreement: float | None = None
    first_divergence: float | None = None
    logprob_divergence: float | None = None


@dataclass(frozen=True)
class AnalysisRequest:
    """What the executor must measure: [start, end) for both revisions (guard: the stable arm only)."""

    kind: Literal["canary", "guard"]
    start: datetime
    end: datetime
    stable_revision: str
    canary_revision: str | None
    step_index: int = 0

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Window:
    request: AnalysisRequest
    stable: ArmFigures
    canary: ArmFigures
    paired: tuple[PairedFigures, ...] = ()
    paired_error: str | None = None


@dataclass(frozen=True)
class GateResult:
    gate: str
    phase: GatePhase
    bucket: str = BUCKET_ALL
    canary: float | None = None
    stable: float | None = None
    threshold: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Verdict:
    request: AnalysisRequest
    phase: MeasurementPhase
    gates: tuple[GateResult, ...]
    window: Window

    @property
    def provider_error(self) -> bool:
        """Inconclusive because the provider could not answer (not because the arms lacked data)."""
        return self.phase == "Inconclusive" and any(g.phase == "Error" for g in self.gates)

    def summary(self) -> str:
        """The gates that decided the phase, with their numbers (for events and the measurement list): the
        provider errors first."""
        inconclusive = self.phase == "Inconclusive"
        deciding: tuple[GatePhase, ...] = ("Error", "Inconclusive") if inconclusive else (self.phase,)
        bad = [g for p in deciding for g in self.gates if g.phase == p and p != "Successful"]
        if not bad:
            return f"{len(self.gates)} gate(s) passed"
        return "; ".join(g.message for g in bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")


# --- gates --------------------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _error_for(names: tuple[str, ...], *arms: ArmFigures) -> str | None:
    for arm in arms:
        for name in names:
            if name in arm.errors:
                return f"{arm.revision}: {arm.errors[name]}"
    return None


class _Judge:
    """Builds gate results with the spec's missing-data policy."""

    def __init__(self, spec: AnalysisSpec):
        self.spec = spec
        self.missing: MeasurementPhase = "Failed" if spec.missing_data == "fail" else "Inconclusive"
        self.gates: list[GateResult] = []

    def compare(
        self, gate: str, bucket: str, figure: str, canary: ArmFigures, stable: ArmFigures | None,
        threshold: float, failed: Callable[[float, float | None], bool], describe: str, enough: bool,
        c_value: float | None, s_value: float | None,
    ) -> None:
        key = figure if bucket == BUCKET_ALL else f"{bucket}/{figure}"
        arms = (canary,) if stable is None else (canary, stable)
        error = _error_for((key,), *arms)
        numbers = f"canary {_fmt(c_value)}, stable {_fmt(s_value)}, threshold {_fmt(threshold)}"
        where = "" if bucket == BUCKET_ALL else f" [prompt {bucket} tokens]"
        if error is not None:
            self.gates.append(GateResult(gate, "Error", bucket, c_value, s_value, threshold,
                                         f"{gate}{where}: provider error: {error}"))
        elif not enough or c_value is None or (stable is not None and s_value is None):
            self.gates.append(GateResult(gate, self.missing, bucket, c_value, s_value, threshold,
                                         f"{gate}{where}: missing data ({numbers})"))
        elif failed(c_value, s_value):
            self.gates.append(GateResult(gate, "Failed", bucket, c_value, s_value, threshold,
                                         f"{gate}{where}: {describe} ({numbers})"))
        else:
            self.gates.append(GateResult(gate, "Successful", bucket, c_value, s_value, threshold,
                                         f"{gate}{where}: ok ({numbers})"))


def _regressed(limit_percent: float) -> Callable[[float, float | None], bool]:
    return lambda c, s: s is not None and (s <= 0 or (c - s) / s * 100 > limit_percent)


def _enough(spec: AnalysisSpec, *figures: Figures) -> bool:
    return all(f.requests is not None and f.requests >= spec.min_requests for f in figures)


def _latency_gates(judge: _Judge, bucket: str, c: Figures, s: Figures, canary: ArmFigures,
                   stable: ArmFigures, names: tuple[tuple[str, str], ...]) -> None:
    limits = judge.spec.thresholds.max_latency_regression_percent
    enough = _enough(judge.spec, c, s)
    for gate, figure in names:
        limit = getattr(limits, gate.removeprefix("latency."))
        if limit is not None:
            judge.compare(gate, bucket, figure, canary, stable, limit, _regressed(limit),
                          f"p95 regressed more than {limit:g}%", enough, getattr(c, figure), getattr(s, figure))


def _quality_gates(judge: _Judge, bucket: str, c: Figures, s: Figures, canary: ArmFigures, stable: ArmFigures,
                   probe: bool, judged_if_absent: bool) -> None:
    t = judge.spec.thresholds
    if not probe:
        return
    # Per figure: a length bucket may hold perplexity tokens but no exact-match prompt (the probe scores texts by
    # context length and prompts by their length); what the runtime scores nothing of there is not judged.
    no_perplexity = c.probe_perplexity is None and s.probe_perplexity is None and not judged_if_absent
    no_exact_match = c.probe_exact_match is None and s.probe_exact_match is None and not judged_if_absent
    if t.max_perplexity_ratio is not None and not no_perplexity:
        ratio = t.max_perplexity_ratio
        judge.compare("quality.perplexity", bucket, "probe_perplexity", canary, stable, ratio,
                      lambda cv, sv: sv is not None and (sv <= 0 or cv / sv > ratio),
                      f"perplexity ratio above {ratio:g}", True, c.probe_perplexity, s.probe_perplexity)
    if t.max_exact_match_drop is not None and not no_exact_match:
        drop = t.max_exact_match_drop
        judge.compare("quality.exactMatch", bucket, "probe_exact_match", canary, stable, drop,
                      lambda cv, sv: sv is not None and sv - cv > drop,
                      f"exact match dropped more than {drop:g}", True, c.probe_exact_match, s.probe_exact_match)


def assess(window: Window, spec: AnalysisSpec, *, probe: bool, paired: bool) -> Verdict:
    """The verdict of one canary window: every configured gate, aggregate and per length bucket."""
    judge = _Judge(spec)
    t = spec.thresholds
    canary, stable = window.canary, window.stable
    c, s = canary.total, stable.total
    _latency_gates(judge, BUCKET_ALL, c, s, canary, stable,
                   (("latency.e2e", "p95_e2e"), ("latency.ttft", "p95_ttft"), ("latency.itl", "p95_itl")))
    if t.max_error_rate is not None:
        limit = t.max_error_rate
        judge.compare("errorRate", BUCKET_ALL, "error_rate", canary, None, limit, lambda cv, _: cv > limit,
                      f"error rate above {limit:g}", _enough(spec, c), c.error_rate, s.error_rate)
    if t.min_cost_saving_percent is not None:
        floor = t.min_cost_saving_percent
        judge.compare("cost", BUCKET_ALL, "tokens_per_gpu_second", canary, stable, floor,
                      lambda cv, sv: sv is not None and (cv <= 0 or (1 - sv / cv) * 100 < floor),
                      f"cost saving below {floor:g}% (tokens per GPU-second)", _enough(spec, c, s),
                      c.tokens_per_gpu_second, s.tokens_per_gpu_second)
    _quality_gates(judge, BUCKET_ALL, c, s, canary, stable, probe, judged_if_absent=True)
    for bucket in sorted(set(canary.buckets) | set(stable.buckets)):
        cb, sb = canary.buckets.get(bucket, Figures()), stable.buckets.get(bucket, Figures())
        if _enough(spec, cb, sb):
            _latency_gates(judge, bucket, cb, sb, canary, stable, (("latency.e2e", "p95_e2e"),))
        _quality_gates(judge, bucket, cb, sb, canary, stable, probe, judged_if_absent=False)
    if paired and t.min_agreement is not None:
        _paired_gates(judge, window, t.min_agreement)
    return _verdict(window, judge.gates)


def _paired_gates(judge: _Judge, window: Window, floor: float) -> None:
    if window.paired_error is not None:
        judge.gates.append(GateResult("quality.agreement", "Error", BUCKET_ALL, None, None, floor,
                                      f"quality.agreement: paired comparison error: {window.paired_error}"))
        return
    by_bucket = {p.bucket: p for p in window.paired}
    if BUCKET_ALL not in by_bucket:
        by_bucket[BUCKET_ALL] = PairedFigures()
    for bucket, p in sorted(by_bucket.items(), key=lambda kv: (kv[0] != BUCKET_ALL, kv[0])):
        if bucket != BUCKET_ALL and p.prompts == 0:
            continue
        arm = ArmFigures(window.canary.revision)
        judge.compare("quality.agreement", bucket, "agreement", arm, None, floor, lambda cv, _: cv < floor,
                      f"token agreement below {floor:g}", p.prompts > 0, p.agreement, None)


def _window_phase(gates: tuple[GateResult, ...] | list[GateResult]) -> MeasurementPhase:
    """Failed beats an unanswerable query or missing data, which beat Successful."""
    phases = {g.phase for g in gates}
    if "Failed" in phases:
        return "Failed"
    return "Inconclusive" if phases & {"Error", "Inconclusive"} else "Successful"


def _verdict(window: Window, gates: list[GateResult]) -> Verdict:
    return Verdict(window.request, _window_phase(gates), tuple(gates), window)


def assess_guard(window: Window, spec: AnalysisSpec) -> Verdict:
    """After a promotion: the new stable's probe quality (window.canary) vs the previous stable's recorded
    figures (window.stable, from status.rollout.baseline). Latency is not compared: the load differs."""
    judge = _Judge(spec)
    current, baseline = window.canary, window.stable
    _quality_gates(judge, BUCKET_ALL, current.total, baseline.total, current, baseline, True, judged_if_absent=True)
    for bucket in sorted(set(current.buckets) & set(baseline.buckets)):
        _quality_gates(judge, bucket, current.buckets[bucket], baseline.buckets[bucket], current, baseline, True,
                       judged_if_absent=False)
    return _verdict(window, judge.gates)


# --- counters (Argo's limits) -------------------------------------------------------------------------------


def count(counters: AnalysisCounters, phase: MeasurementPhase, spec: AnalysisSpec, *,
          provider_error: bool = False) -> tuple[AnalysisCounters, Outcome, str]:
    """Add one measurement to the counters: what the rollout does next, and why. `provider_error`: the window
    is Inconclusive because a query could not be answered (`Verdict.provider_error`): it holds without
    charging `inconclusiveLimit` up to `consecutiveErrorLimit` such windows in a row; each one beyond counts
    as missing data (`missingData`), until a window is answered."""
    n = counters.model_copy()
    why = ""
    if phase == "Inconclusive" and provider_error:
        n.errors += 1
        n.consecutive_errors += 1
        limit = spec.consecutive_error_limit
        if n.consecutive_errors <= limit:
            return n, "hold", f"holding (provider error {n.consecutive_errors}/{limit} in a row)"
        why = f"provider error {n.consecutive_errors} in a row, beyond consecutiveErrorLimit {limit}: "
        phase = "Failed" if spec.missing_data == "fail" else "Inconclusive"
    else:
        n.consecutive_errors = 0
    if phase == "Successful":
        n.successful += 1
        return n, "advance", "analysis successful"
    if phase == "Failed":
        n.failed += 1
        if n.failed > spec.failure_limit:
            return n, "rollback", f"{why}{n.failed} failed measurement(s), failureLimit {spec.failure_limit}"
        return n, "hold", _holding(why, f"failed measurement {n.failed}, failureLimit {spec.failure_limit}")
    n.inconclusive += 1
    if n.inconclusive > spec.inconclusive_limit:
        return n, "rollback", (f"{why}{n.inconclusive} inconclusive measurement(s), "
                               f"inconclusiveLimit {spec.inconclusive_limit}")
    return n, "hold", _holding(why, f"inconclusive measurement {n.inconclusive}, "
                                    f"inconclusiveLimit {spec.inconclusive_limit}")


def _holding(why: str, charged: str) -> str:
    return f"holding ({why}{charged})" if why else charged


# --- status <-> figures -------------------------------------------------------------------------------------


def _figures_status(f: Figures) -> dict[str, float | None]:
    return {
        "requests": f.requests, "p95_latency_seconds": f.p95_e2e, "p95_ttft_seconds": f.p95_ttft,
        "p95_itl_seconds": f.p95_itl, "error_rate": f.error_rate, "tokens_per_gpu_second": f.tokens_per_gpu_second,
        "cost_per_million_tokens": f.cost_per_million, "probe_perplexity": f.probe_perplexity,
        "probe_exact_match": f.probe_exact_match,
    }


def arm_status(arm: ArmFigures) -> ArmAnalysisStatus:
    return ArmAnalysisStatus(
        revision=arm.revision, **_figures_status(arm.total),
        buckets=[BucketFiguresStatus(bucket=b, **_figures_status(f)) for b, f in sorted(arm.buckets.items())],
    )


def _figures_from(s: ArmAnalysisStatus | BucketFiguresStatus) -> Figures:
    return Figures(s.requests, s.p95_latency_seconds, s.p95_ttft_seconds, s.p95_itl_seconds, s.error_rate,
                   s.tokens_per_gpu_second, s.cost_per_million_tokens, s.probe_perplexity, s.probe_exact_match)


def arm_from_status(s: ArmAnalysisStatus) -> ArmFigures:
    """The recorded figures of an arm (the guard's baseline) back as figures."""
    return ArmFigures(s.revision or "", _figures_from(s), {b.bucket: _figures_from(b) for b in s.buckets})


def verdict_status(v: Verdict, finished_at: str) -> LastAnalysisStatus:
    return LastAnalysisStatus(
        phase=v.phase, finished_at=finished_at, stable=arm_status(v.window.stable), canary=arm_status(v.window.canary),
        paired=[PairedFiguresStatus(bucket=p.bucket, prompts=p.prompts, agreement=p.agreement,
                                    first_divergence=p.first_divergence, logprob_divergence=p.logprob_divergence)
                for p in v.window.paired],
        gates=[GateStatus(gate=g.gate, bucket=g.bucket, phase=g.phase, canary=g.canary, stable=g.stable,
                          threshold=g.threshold, message=g.message) for g in v.gates],
    )

