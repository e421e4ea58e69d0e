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


def test_prompts_come_from_the_golden_set_then_the_users_list_deduplicated_and_capped() -> None:
    import json

    from localattn_operator.paired import prompts_from

    golden = json.dumps({"perplexityTexts": ["a long text"], "exactMatch": [{"prompt": "p1", "expected": "x"}]})
    assert prompts_from(golden, "u1\n\n p1 \nu2\n", 10) == ["p1", "a long text", "u1", "u2"]
    assert prompts_from(golden, "u1", 2) == ["p1", "a long text"]
    assert prompts_from(None, None, 5) == []
    with pytest.raises(ValueError, match="not JSON"):
        prompts_from("{", None, 5)


def test_vllms_completion_response_is_read_as_token_ids_and_logprobs() -> None:
    from localattn_operator.metrics_provider import ProviderError
    from localattn_operator.providers.completions import parse

    answer = {"choices": [{"logprobs": {"tokens": ["token_id:17", "token_id:4"], "token_logprobs": [-0.5, None]}}],
              "usage": {"prompt_tokens": 9}}
    length, completion = parse(answer)
    assert length == 9 and list(completion.tokens) == [17, 4] and list(completion.logprobs) == [-0.5, 0.0]
    with pytest.raises(ProviderError, match="unexpected completion response"):
        parse({"choices": []})


def test_a_paired_window_sends_every_prompt_to_both_pods_and_any_failure_is_an_error() -> None:
    from localattn_operator.measure import PairedRequest, run_paired
    from localattn_operator.metrics_provider import ProviderError

    sent: list[tuple[str, str]] = []

    def complete(url: str, model: str | None, prompt: str, max_tokens: int) -> tuple[int, Completion]:
        sent.append((url, prompt))
        if prompt == "boom" and url == "canary":
            raise ProviderError("canary: timed out")
        tokens = [1, 2, 3] if url == "stable" or prompt == "same" else [1, 9, 9]
        return (4000 if prompt == "long" else 10), c(tokens)

    request = PairedRequest(("same", "long"), "stable", "canary", "tiny", 3, complete=complete)
    figures, error = run_paired(request, [512, 2048])
    assert error is None and sent == [("stable", "same"), ("canary", "same"), ("stable", "long"), ("canary", "long")]
    by = {f.bucket: f for f in figures}
    assert by["0-512"].agreement == 1.0 and by["2048-inf"].agreement == pytest.approx(1 / 3)
    figures, error = run_paired(PairedRequest(("same", "boom"), "stable", "canary", complete=complete), [512])
    assert figures == () and error == "canary: timed out"
    assert run_paired(PairedRequest(error="no ready canary pod"), [512]) == ((), "no ready canary pod")
