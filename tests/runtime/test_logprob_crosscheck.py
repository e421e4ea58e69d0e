"""Cross-check on a real pretrained model: the plugin's per-token prompt logprobs through vLLM equal a dense
transformers forward of the same weights whose attention is masked explicitly to sinks + window.

The reference shares no code with the plugin or the kernels: transformers' own Llama with an attention
function (registered through `AttentionInterface`) that adds a dense `-inf` mask built here from the documented
semantics (docs/runtime.md: key j is visible to query i iff j <= i and (j < S or i - j < W); global layers: j <=
i). Both sides run float32 on SmolLM2-135M at 1k tokens, long enough that local attention matters: the
local logprobs differ from full attention's far more than from the plugin's (the check could fail).
"""

from __future__ import annotations

import math
import runpy
import time
from pathlib import Path
from typing import Any

import pytest

run_engines = runpy.run_path(str(Path(__file__).with_name("_engines.py")))["run_engines"]

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

WINDOW, SINKS, GLOBAL = 256, 4, (0, 15)
LENGTH = 1024  # 4W: three quarters of the prompt lie beyond the window
#: Max |logprob(vLLM + plugin) - logprob(dense-masked transformers)| over all prompt tokens, float32.
#: Measured 2026-12-01: see docs/runtime.md ("Cross-check against a dense-masked forward").
TOLERANCE = 1e-3
ATTN = "localattn_crosscheck_dense"


def _dense_masked_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            scaling: float, dropout: float = 0.0, **_: Any) -> tuple[Any, Any]:
    """Plain softmax(QK^T * scale + mask) V with the sink + window mask of `module.layer_idx` (B=1, no padding)."""
    import torch

    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    q_len, k_len = query.shape[2], k.shape[2]
    i = torch.arange(k_len - q_len, k_len)[:, None]
    j = torch.arange(k_len)[None, :]
    visible = j <= i
    if module.layer_idx not in _state["global"]:
        visible &= (j < _state["sinks"]) | (i - j < _state["window"])
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.matmul(scores.softmax(-1), v)
    return out.transpose(1, 2).contiguous(), None


_state: dict[str, Any] = {}


def _hf_logprobs(model_dir: Path, ids: list[int], masks: list[tuple[int, int, set[int]]]) -> list[list[float]]:
    """Per-token logprobs of `ids` under each (window, sinks, global layers) mask, one model load."""
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register(ATTN, _dense_masked_attention)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=ATTN)
    out = []
    for window, sinks, global_layers in masks:
        _state.update(window=window, sinks=sinks, **{"global": global_layers})
        with torch.no_grad():
            logp = model.eval()(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        out.append([float(x) for x in logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]])
    return out


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
