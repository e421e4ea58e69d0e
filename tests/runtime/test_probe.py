"""The probe's pure parts: golden-set validation, scoring arithmetic, finding the local server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from localattn_runtime import golden, probe


def test_golden_set_round_trips_and_errors_name_the_field(tmp_path: Path) -> None:
    g = golden.GoldenSet(("def f():\n",), (golden.ExactMatchItem("import ", "os\n"),))
    path = golden.write(g, tmp_path / "golden.json")
    assert golden.load(path) == g
    with pytest.raises(golden.GoldenSetError, match=r"exactMatch\[0\]"):
        golden.parse({"exactMatch": [{"prompt": "x"}]})
    with pytest.raises(golden.GoldenSetError, match="perplexityTexts"):
        golden.parse({"perplexityTexts": "not a list"})
    with pytest.raises(golden.GoldenSetError, match="empty"):
        golden.parse({})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(golden.GoldenSetError, match="not valid JSON"):
        golden.load(tmp_path / "bad.json")


def test_perplexity_is_token_weighted() -> None:
    assert probe.perplexity([[math.log(0.5)] * 3, [math.log(0.25)]]) == pytest.approx(
        math.exp(-(3 * math.log(0.5) + math.log(0.25)) / 4))
    assert math.isnan(probe.perplexity([]))


def test_prompt_logprobs_of_a_vllm_choice() -> None:
    choice = json.loads('{"prompt_logprobs": [null, {"17": {"logprob": -1.5, "rank": 3}},'
                        ' {"5": {"logprob": -0.25, "rank": 1}}]}')
    assert probe.prompt_token_logprobs(choice) == [-1.5, -0.25]


def test_exact_match_is_exact() -> None:
    assert probe.completion_matches("    return x\n", "    return x\n")
    assert not probe.completion_matches("    return x", "    return x\n")


@pytest.mark.parametrize(("argv", "env", "url"), [
    (["vllm", "serve", "m"], {}, "http://127.0.0.1:8000"),
    (["vllm", "serve", "m", "--port", "9001", "--host", "0.0.0.0"], {}, "http://127.0.0.1:9001"),
    (["vllm", "serve", "m", "--port=9002", "--host=10.1.2.3"], {}, "http://10.1.2.3:9002"),
    (["vllm", "serve", "m", "--port", "9001"], {"LOCALATTN_PROBE_URL": "http://x:1"}, "http://x:1"),
])
def test_server_url(argv: list[str], env: dict[str, str], url: str) -> None:
    assert probe.server_url(argv, env) == url


def test_perplexity_per_bucket_follows_each_tokens_context_length() -> None:
    # entry j is predicted from j + 1 tokens: with boundaries [2], entries 0 (1 token) fall in 0-2, the rest in 2-inf
    lps = [[math.log(0.5), math.log(0.25), math.log(0.25)], [math.log(0.5)]]
    by = probe.perplexity_by_bucket(lps, [2])
    assert by["0-2"] == pytest.approx(2.0) and by["2-inf"] == pytest.approx(4.0)
    assert math.isnan(probe.perplexity_by_bucket([[math.log(0.5)]], [2])["2-inf"])


def test_a_probe_run_scores_each_bucket_and_exact_match_by_prompt_length() -> None:
    class Recorded:
        """Recorded server answers: logprobs per text, (completion, prompt tokens) per prompt."""

        def prompt_logprobs(self, text: str) -> list[float]:
            return [math.log(0.5)] * 3 if text == "long" else [math.log(0.5)]

        def greedy(self, prompt: str, max_tokens: int) -> tuple[str, int]:
            return ("ok", 1) if prompt == "short" else ("wrong", 9)

    gold = golden.GoldenSet(("long", "one"), (golden.ExactMatchItem("short", "ok"),
                                              golden.ExactMatchItem("far", "ok")))
    result = probe.score(Recorded(), gold, 4, pause_s=0, boundaries=[2])  # type: ignore[arg-type]
    assert result.exact_match == 0.5 and result.perplexity == pytest.approx(2.0)
    assert result.by_bucket["0-2"] == (pytest.approx(2.0), 1.0)
    assert result.by_bucket["2-inf"] == (pytest.approx(2.0), 0.0)
    assert probe.score(Recorded(), gold, 4, pause_s=0).by_bucket == {}  # type: ignore[arg-type]
