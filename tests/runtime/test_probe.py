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
