"""`localattn load`: a bounded request stream from vLLM's own load client, `vllm bench serve` (pure parts).

Why `vllm bench serve` and not a loop of our own: it is the client vLLM's figures are measured with
(Poisson or fixed-rate arrivals, a concurrency cap, streaming TTFT/ITL/E2EL per request, `--save-result`).

Prompt mix: local attention only differs past its window W, so the stream mixes prompts shorter and longer
than W. vLLM's random dataset draws each prompt's length uniformly from [L(1-r), L(1+r)] (input range
ratio r); centred on L = W with r = spread, about half the prompts fall below W and half above, the
shortest W(1-spread) tokens, the longest W(1+spread). The summary counts both sides as the client sent them.

Bounds: `--requests N` always; with `--rate R` and `--duration S` the count becomes min(N, R*S), so the
stream ends by itself within about S seconds; the caller also stops the client past S plus a grace period.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = (50, 90, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True)
class LoadSpec:
    target: str  # base URL, e.g. http://127.2.0.1:8000
    model: str  # the served model name
    requests: int = 100
    duration: float | None = None  # seconds
    rate: float | None = None  # requests per second; None: as fast as the concurrency cap allows
    concurrency: int = 4
    window: int = 256
    spread: float = 0.75  # prompt lengths in [W(1-spread), W(1+spread)]
    output_len: int = 32
    tokenizer: str | None = None  # default: the server's model (a path or a name)
    seed: int = 0


@dataclass(frozen=True)
class PromptMix:
    input_len: int
    range_ratio: float

    @property
    def shortest(self) -> int:
        return math.ceil(self.input_len * (1 - self.range_ratio))

    @property
    def longest(self) -> int:
        return math.floor(self.input_len * (1 + self.range_ratio))


def prompt_mix(window: int, spread: float) -> PromptMix:
    """Prompt lengths centred on the window, both shorter and longer than it."""
    if window < 2:
        raise ValueError("window must be at least 2 tokens")
    if not 0 < spread < 1:
        raise ValueError("spread must be in (0, 1): some prompts below the window and some above")
    mix = PromptMix(window, spread)
    if not mix.shortest < window < mix.longest:
        raise ValueError(f"window {window} with spread {spread} gives no prompt on both sides of the window")
    return mix


def request_count(spec: LoadSpec) -> int:
    if spec.requests < 1:
        raise ValueError("--requests must be at least 1")
    if spec.rate is not None and spec.duration is not None:
        return max(1, min(spec.requests, math.floor(spec.rate * spec.duration)))
    return spec.requests


def vllm_executable() -> str:
    """`vllm` of this environment (next to the running interpreter), not whatever is first on PATH."""
    return str(Path(sys.executable).with_name("vllm"))


def bench_argv(spec: LoadSpec, result_dir: Path, result_file: str, vllm: str | None = None) -> list[str]:
    mix = prompt_mix(spec.window, spec.spread)
    argv = [
        vllm or vllm_executable(), "bench", "serve",
        "--backend", "openai",
        "--base-url", spec.target.rstrip("/"),
        "--endpoint", "/v1/completions",
        "--model", spec.model,
        "--dataset-name", "random",
        "--random-input-len", str(mix.input_len),
        "--random-output-len", str(spec.output_len),
        "--random-range-ratio", json.dumps({"input": mix.range_ratio, "output": 0.0}),
        "--ignore-eos",  # every request generates output_len tokens: comparable ITL and E2EL
        "--num-prompts", str(request_count(spec)),
        "--request-rate", "inf" if spec.rate is None else str(spec.rate),
        "--max-concurrency", str(spec.concurrency),
        "--percentile-metrics", ",".join(METRICS),
        "--metric-percentiles", ",".join(str(p) for p in PERCENTILES),
        "--seed", str(spec.seed),
        "--save-result", "--save-detailed",
        "--result-dir", str(result_dir),
        "--result-filename", result_file,
    ]  # fmt: skip
    if spec.tokenizer:
        argv += ["--tokenizer", spec.tokenizer]
    return argv


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    duration: float
    below_window: int  # completed or not, prompts shorter than the window (tokens as the client counted)
    above_window: int
    percentiles_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> "p50"/"mean" -> ms
    errors: list[str] = field(default_factory=list)  # distinct error messages, first few

    @property
    def requests(self) -> int:
        return self.completed + self.failed


def summarize(result: dict[str, Any], window: int) -> Summary:
    """The figures a load run ends with, from `vllm bench serve --save-result --save-detailed` JSON."""
    percentiles: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = {"mean": result.get(f"mean_{metric}_ms")}
        values.update({f"p{p}": result.get(f"p{p}_{metric}_ms") for p in PERCENTILES})
        if any(v is not None for v in values.values()):
            percentiles[metric] = {k: float(v) for k, v in values.items() if v is not None}
    lens = [int(n) for n in result.get("input_lens") or []]
    errors = [str(e) for e in result.get("errors") or [] if e]
    distinct = list(dict.fromkeys(e.strip().splitlines()[-1] if e.strip() else e for e in errors))[:5]
    return Summary(
        completed=int(result.get("completed") or 0),
        failed=int(result.get("failed") or 0),
        duration=float(result.get("duration") or 0.0),
        below_window=sum(1 for n in lens if n < window),
        above_window=sum(1 for n in lens if n > window),
        percentiles_ms=percentiles,
        errors=distinct,
    )


def format_summary(summary: Summary, window: int) -> str:
    lines = [
        f"requests: {summary.requests} in {summary.duration:.1f} s; completed {summary.completed}, "
        f"errors {summary.failed}",
        f"prompts: {summary.below_window} shorter than the window ({window} tokens), {summary.above_window} longer",
        f"{'ms':<6}" + "".join(f"{k:>10}" for k in ("mean", *(f"p{p}" for p in PERCENTILES))),
    ]
    for metric, values in summary.percentiles_ms.items():
        cells = [values.get(k) for k in ("mean", *(f"p{p}" for p in PERCENTILES))]
        lines.append(f"{metric.upper():<6}" + "".join(f"{v:>10.1f}" if v is not None else f"{'-':>10}" for v in cells))
    lines += [f"error: {e}" for e in summary.errors]
    return "\n".join(lines)
