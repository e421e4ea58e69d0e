"""Cross-check on a real pretrained model: the plugin's per-token prompt logprobs through vLLM equal a dense
transformers forward of the same weights whose attention is masked explicitly to sinks + window.

The reference (`_masked_reference.py`) shares no code with the plugin or the kernels: transformers' own Llama
with an attention function that adds a dense `-inf` mask built from the documented semantics (docs/runtime.md). Both sides run float32 on SmolLM2-135M at 1k tokens, long enough that local attention matters: the
local logprobs differ from full attention's far more than from the plugin's (the check could fail).
"""

from __future__ import annotations

import math
import runpy
import time
from pathlib import Path

import pytest

run_engines = runpy.run_path(str(Path(__file__).with_name("_engines.py")))["run_engines"]
reference = runpy.run_path(str(Path(__file__).with_name("_masked_reference.py")))

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

WINDOW, SINKS, GLOBAL = 256, 4, (0, 15)
LENGTH = 1024  # 4W: three quarters of the prompt lie beyond the window
#: Max |logprob(vLLM + plugin) - logprob(dense-masked transformers)| over all prompt tokens, float32.
#: Measured 2026-12-01: see docs/runtime.md ("Cross-check against a dense-masked forward").
TOLERANCE = 1e-3


def _hf_logprobs(model_dir: Path, ids: list[int], masks: list[tuple[int, int, set[int]]]) -> list[list[float]]:
    """Per-token logprobs of `ids` under each (window, sinks, global layers) mask, one model load."""
    model = reference["load"](model_dir)
    return [reference["logprobs"](model, ids, window, sinks, global_layers) for window, sinks, global_layers in masks]


def _prompt(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    from localattn_runtime import tinymodel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids: list[int] = []
    for text in tinymodel.read_texts(held_out=True):
        ids += tok(text)["input_ids"]
        if len(ids) >= LENGTH:
            return ids[:LENGTH]
    raise AssertionError("not enough held-out text")


def test_plugin_logprobs_match_a_dense_masked_transformers_forward(smollm2_model: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    ids = _prompt(smollm2_model)
    cfg = {"windowSize": WINDOW, "sinkTokens": SINKS, "globalLayers": {"indices": list(GLOBAL)}}
    got = run_engines({"model": str(smollm2_model), "engines": [
        {"name": "local", "config": cfg, "prompts": [ids], "prompt_logprobs": True, "max_tokens": 1}]},
        tmp_path / "engines.json", timeout=600)
    plugin = got["local"]["outputs"][0]["prompt_logprobs"][1:]
    assert len(plugin) == LENGTH - 1
    t1 = time.monotonic()
    dense, full = _hf_logprobs(smollm2_model, ids, [(WINDOW, SINKS, set(GLOBAL)), (LENGTH, 0, set())])
    diff = [abs(a - b) for a, b in zip(plugin, dense, strict=True)]
    effect = [abs(a - b) for a, b in zip(dense, full, strict=True)]
    print(f"\nmax |plugin - dense-masked| = {max(diff):.2e} (mean {sum(diff) / len(diff):.2e}); "
          f"max |local - full| = {max(effect):.2e}; ppl local {math.exp(-sum(dense) / len(dense)):.3f} "
          f"full {math.exp(-sum(full) / len(full)):.3f}; vLLM {t1 - t0:.0f} s, transformers {time.monotonic() - t1:.0f} s")
    assert max(diff) <= TOLERANCE
    # below the window both are full attention; beyond it the mask matters, by far more than the tolerance
    assert max(effect[:WINDOW]) <= TOLERANCE
    assert max(effect[WINDOW:]) > 50 * TOLERANCE
