"""`localattn load`'s pure parts: the prompt mix around the window, the `vllm bench serve` command line that
the installed vLLM accepts, and the summary read from its result JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from localattn_cli.main import build_parser
from localattn_dev.load import LoadSpec, bench_argv, format_summary, prompt_mix, request_count, summarize


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_prompt_mix_straddles_the_window() -> None:
    mix = prompt_mix(256, 0.75)
    assert (mix.input_len, mix.shortest, mix.longest) == (256, 64, 448)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="spread"):
            prompt_mix(256, bad)
    with pytest.raises(ValueError, match="both sides"):
        prompt_mix(2, 0.1)


def test_request_count_is_bounded_by_count_and_time() -> None:
    assert request_count(LoadSpec("u", "m", requests=100)) == 100
    assert request_count(LoadSpec("u", "m", requests=100, rate=2, duration=10)) == 20
    assert request_count(LoadSpec("u", "m", requests=5, rate=2, duration=10)) == 5
    assert request_count(LoadSpec("u", "m", requests=5, rate=0.01, duration=10)) == 1


def test_bench_argv(tmp_path: Path) -> None:
    spec = LoadSpec("http://127.2.0.1:8000/", "tiny", requests=50, rate=4, duration=5, concurrency=3,
                    window=128, spread=0.5, output_len=16, tokenizer="/models/tiny")  # fmt: skip
    argv = bench_argv(spec, tmp_path, "r.json", vllm="/v/bin/vllm")
    assert argv[:3] == ["/v/bin/vllm", "bench", "serve"]
    assert flag(argv, "--base-url") == "http://127.2.0.1:8000" and flag(argv, "--endpoint") == "/v1/completions"
    assert (flag(argv, "--dataset-name"), flag(argv, "--random-input-len")) == ("random", "128")
    assert json.loads(flag(argv, "--random-range-ratio")) == {"input": 0.5, "output": 0.0}
    assert (flag(argv, "--num-prompts"), flag(argv, "--request-rate"), flag(argv, "--max-concurrency")) == ("20", "4", "3")
    assert flag(argv, "--random-output-len") == "16" and "--ignore-eos" in argv
    assert flag(argv, "--percentile-metrics") == "ttft,tpot,itl,e2el"
    assert (flag(argv, "--result-dir"), flag(argv, "--result-filename")) == (str(tmp_path), "r.json")
    assert flag(argv, "--tokenizer") == "/models/tiny"
    assert flag(bench_argv(LoadSpec("u", "m"), tmp_path, "r.json"), "--request-rate") == "inf"


def test_installed_vllm_bench_serve_knows_every_flag_we_pass(tmp_path: Path) -> None:
    """Every flag we build appears in the installed client's full help (a renamed flag fails here, not at
    the first load run)."""
    argv = bench_argv(LoadSpec("http://127.0.0.1:9", "m", tokenizer="t"), tmp_path, "r.json")
    helptext = subprocess.run([argv[0], "bench", "serve", "--help=all"], capture_output=True, text=True, timeout=300)
    assert helptext.returncode == 0, helptext.stderr
    for arg in argv[3:]:
        if arg.startswith("--"):
            assert f"{arg} " in helptext.stdout or f"{arg}\n" in helptext.stdout, arg


RESULT = {
    "duration": 12.5, "completed": 9, "failed": 1,
    "mean_ttft_ms": 100.0, "p50_ttft_ms": 90.0, "p90_ttft_ms": 150.0, "p99_ttft_ms": 199.0,
    "mean_itl_ms": 20.0, "p50_itl_ms": 19.0, "p90_itl_ms": 25.0, "p99_itl_ms": 30.0,
    "mean_e2el_ms": 700.0, "p50_e2el_ms": 650.0, "p90_e2el_ms": 900.0, "p99_e2el_ms": 1000.0,
    "input_lens": [64, 100, 128, 200, 250, 300, 400, 448, 130, 127],
    "errors": ["", "", "Traceback...\nServerDisconnectedError: gone", "", "", "", "", "", "", ""],
}  # fmt: skip


def test_summary_of_a_result() -> None:
    summary = summarize(RESULT, window=128)
    assert (summary.completed, summary.failed, summary.requests) == (9, 1, 10)
    assert (summary.below_window, summary.above_window) == (3, 6)  # 128 itself is neither
    assert summary.percentiles_ms["ttft"] == {"mean": 100.0, "p50": 90.0, "p90": 150.0, "p99": 199.0}
    assert "tpot" not in summary.percentiles_ms  # absent from the result: not invented
    assert summary.errors == ["ServerDisconnectedError: gone"]
    text = format_summary(summary, 128)
    assert "errors 1" in text and "3 shorter than the window (128 tokens), 6 longer" in text
    assert "TTFT" in text and "199.0" in text and "E2EL" in text


def test_cli_parses_the_load_command() -> None:
    args = build_parser().parse_args(
        ["load", "--target", "http://x", "--model", "m", "--requests", "7", "--duration", "3", "--rate", "2",
         "--concurrency", "2", "--window", "64", "--output-len", "8", "--save", "/tmp/r.json"]
    )  # fmt: skip
    assert (args.requests, args.duration, args.rate, args.concurrency, args.window, args.output_len) == (7, 3, 2, 2, 64, 8)
