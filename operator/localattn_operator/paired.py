"""Paired comparison: the same prompts, greedy, to one stable and one canary pod -> agreement figures (pure).

Quality probes score each arm against references; a paired comparison needs none: under greedy decoding an
unchanged model reproduces stable's tokens, so how early and how much the canary departs from them is a direct
measure of what a local-attention setting changed. The executor sends the prompts (with logprobs) and passes
the two completions here; it reports per prompt-length bucket, since local attention only differs past the
window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from localattn_operator.analysis import PairedFigures
from localattn_operator.models import BUCKET_ALL
from localattn_operator.queries import bucket_of


@dataclass(frozen=True)
class Completion:
    """One greedy completion: its token ids and the logprob of each chosen token."""

    tokens: Sequence[int]
    logprobs: Sequence[float]


@dataclass(frozen=True)
class Pair:
    prompt_tokens: int
    stable: Completion
    canary: Completion


@dataclass(frozen=True)
class PairScore:
    agreement: float  # equal positions / the longer completion
    first_divergence: int  # index of the first differing token (= the shorter length when none differs)
    logprob_divergence: float  # mean |logprob difference| over the shared prefix (the same tokens)


def score(pair: Pair) -> PairScore:
    s, c = pair.stable.tokens, pair.canary.tokens
    longest = max(len(s), len(c))
    if longest == 0:
        return PairScore(1.0, 0, 0.0)
    equal = sum(1 for a, b in zip(s, c, strict=False) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(s, c, strict=False)) if a != b), min(len(s), len(c)))
    prefix = list(zip(pair.stable.logprobs[:first], pair.canary.logprobs[:first], strict=False))
    divergence = sum(abs(a - b) for a, b in prefix) / len(prefix) if prefix else 0.0
    return PairScore(equal / longest, first, divergence)


def summarise(pairs: Sequence[Pair], boundaries: Sequence[int]) -> tuple[PairedFigures, ...]:
    """The aggregate (`all`) and one entry per length bucket that has prompts."""
    groups: dict[str, list[PairScore]] = {BUCKET_ALL: []}
    for pair in pairs:
        scored = score(pair)
        groups[BUCKET_ALL].append(scored)
        groups.setdefault(bucket_of(pair.prompt_tokens, boundaries), []).append(scored)
    out = []
    for bucket, scores in groups.items():
        n = len(scores)
        if n == 0:
            out.append(PairedFigures(bucket, 0))
            continue
        out.append(PairedFigures(bucket, n, sum(x.agreement for x in scores) / n,
                                 sum(x.first_divergence for x in scores) / n,
                                 sum(x.logprob_divergence for x in scores) / n))
    return tuple(out)


def prompts_from(golden_set: str | None, extra: str | None, limit: int) -> list[str]:
    """The paired prompts: the golden set's (its exact-match prompts, then its perplexity texts, which run past
    the window) and the user's (one per line), first `limit` of them, duplicates dropped. Raises ValueError
    naming what is malformed; an empty result is the caller's error to report."""
    prompts: list[str] = []
    if golden_set is not None:
        try:
            doc = json.loads(golden_set)
        except ValueError as exc:
            raise ValueError(f"the golden set is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("the golden set must be a JSON object")
        items = doc.get("exactMatch") or []
        texts = doc.get("perplexityTexts") or []
        if not isinstance(items, list) or not isinstance(texts, list):
            raise ValueError("the golden set's exactMatch and perplexityTexts must be lists")
        prompts += [str(i["prompt"]) for i in items if isinstance(i, dict) and isinstance(i.get("prompt"), str)]
        prompts += [t for t in texts if isinstance(t, str)]
    if extra is not None:
        prompts += [line.strip() for line in extra.splitlines() if line.strip()]
    unique = list(dict.fromkeys(p for p in prompts if p))
    return unique[:limit]
