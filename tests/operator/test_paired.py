"""Paired comparison scores and their per-bucket summary (pure)."""

from __future__ import annotations

import pytest

from localattn_operator.paired import Completion, Pair, score, summarise
from localattn_operator.queries import bucket_of


def c(tokens: list[int], logprobs: list[float] | None = None) -> Completion:
    return Completion(tokens, logprobs if logprobs is not None else [-0.1] * len(tokens))


def test_identical_completions_agree_fully() -> None:
    s = score(Pair(100, c([1, 2, 3]), c([1, 2, 3])))
    assert (s.agreement, s.first_divergence, s.logprob_divergence) == (1.0, 3, 0.0)


def test_divergence_position_and_logprob_gap_over_the_shared_prefix() -> None:
    s = score(Pair(100, c([1, 2, 3, 4], [-0.1, -0.2, -0.3, -0.4]), c([1, 2, 9, 4], [-0.1, -0.6, -2.0, -0.4])))
    assert s.first_divergence == 2
    assert s.agreement == pytest.approx(3 / 4)  # position 3 agrees again
    assert s.logprob_divergence == pytest.approx((0.0 + 0.4) / 2)


def test_a_shorter_completion_counts_the_missing_tokens_as_disagreement() -> None:
    s = score(Pair(10, c([1, 2]), c([1, 2, 3, 4])))
    assert s.agreement == 0.5 and s.first_divergence == 2
    assert score(Pair(10, c([]), c([]))).agreement == 1.0


def test_bucket_of_uses_half_open_ranges() -> None:
    assert [bucket_of(n, [512, 2048]) for n in (0, 511, 512, 2047, 2048, 10**6)] == [
        "0-512", "0-512", "512-2048", "512-2048", "2048-inf", "2048-inf"]


def test_summary_per_bucket() -> None:
    pairs = [Pair(100, c([1, 2]), c([1, 2])), Pair(3000, c([1, 2]), c([5, 6])), Pair(4000, c([1, 2]), c([1, 6]))]
    by = {p.bucket: p for p in summarise(pairs, [512, 2048])}
    assert by["all"].prompts == 3 and by["all"].agreement == pytest.approx((1 + 0 + 0.5) / 3)
    assert by["0-512"].agreement == 1.0 and "512-2048" not in by
    assert by["2048-inf"].prompts == 2 and by["2048-inf"].first_divergence == pytest.approx(0.5)
    assert summarise([], [512])[0].prompts == 0
