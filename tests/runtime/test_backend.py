"""The attention backend on real vLLM (CPU), checked against stock vLLM and a torch/transformers reference.

All engines of this module run once, in one subprocess (`_engines.py`: vLLM registers plugins per process and
memoises its backend choice), in-process and sequentially, each with its own plugin configuration; the tests
then assert on the recorded tokens and logprobs. fp32 so that "identical" means identical: in bf16 the random
tiny model's top-2 logits are often closer than bf16 rounding (docs/runtime.md states the bf16 tolerance).
"""

from __future__ import annotations

import json
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The shared engine runner (a script as well as a module; loaded by path under --import-mode=importlib).
run_engines = runpy.run_path(str(Path(__file__).with_name("_engines.py")))["run_engines"]

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

W, S = 48, 4  # small window so that the 300-token prompts exercise it
MIN_CTX = 150
PROMPT_LENS = (300, 37, 120)
GEN = 8  # tokens generated per request (the runner's default)


def _prompts(lens: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[0] + [rng.randrange(3, 2048) for _ in range(n - 1)] for n in lens]


# ------------------------------------------------------------------------------------------ torch reference
def reference_logprobs(model_dir: Path, ids: list[int], layer_masks: list[Any]) -> list[float | None]:
    """Teacher-forced log p(ids[i] | ids[:i]) from transformers' Llama with a boolean mask per layer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for layer, mask in zip(model.model.layers, layer_masks, strict=True):
        additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, float("-inf"))[None, None]
        attn = layer.self_attn
        orig = attn.forward

        def forward(*a: Any, _orig: Any = orig, _mask: Any = additive, **kw: Any) -> Any:
            kw["attention_mask"] = _mask
            return _orig(*a, **kw)

        attn.forward = forward
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [None] + [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def masks(n: int, *, local_layers: set[int], window: int, sinks: int, first_local: int = 0,
          num_layers: int = 4) -> list[Any]:
    """Per-layer [n, n] masks: full causal, or sink + window for rows >= first_local on local layers."""
    import torch

    from localattn_kernels.reference import local_mask

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    local = local_mask(torch.arange(n), n, window=window, sinks=sinks)
    rows = (torch.arange(n) >= first_local)[:, None]
    mixed = torch.where(rows, local, causal)
    return [mixed if i in local_layers else causal for i in range(num_layers)]


def _max_diff(a: list[float | None], b: list[float | None], start: int = 1) -> float:
    return max(abs(x - y) for x, y in zip(a[start:], b[start:], strict=True) if x is not None and y is not None)


# ------------------------------------------------------------------------------------------------ the tests
LOCAL = {"windowSize": W, "sinkTokens": S, "globalLayers": {"indices": [1]}}
ENGINES = [
    {"name": "stock", "config": None, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True},
    {"name": "wide", "config": {"windowSize": 4096, "sinkTokens": 4, "globalLayers": {"indices": [0]}},
     "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True},
    {"name": "local", "config": LOCAL, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True},
    {"name": "nosink", "config": {**LOCAL, "sinkTokens": 0}, "prompts": _prompts(PROMPT_LENS),
     "prompt_logprobs": True},
    {"name": "minctx", "config": {**LOCAL, "minContextLength": MIN_CTX},
     "prompts": _prompts((MIN_CTX - 1, 300, 140), seed=1), "prompt_logprobs": True, "max_tokens": 16},
    {"name": "local_cached", "config": LOCAL, "prompts": _prompts(PROMPT_LENS), "repeat": 2,
     "engine_args": {"enable_prefix_caching": True, "block_size": 32}},
    # bf16: on CPUs with AMX vLLM tiles the cache for AMX ("amx" isa), which the local path reads through a
    # per-step vec-order copy; elsewhere the vec layout again. Stock bf16 gives the scale of bf16 rounding.
    {"name": "stock_bf16", "config": None, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True,
     "engine_args": {"dtype": "bfloat16"}},
    {"name": "local_bf16", "config": LOCAL, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True,
     "engine_args": {"dtype": "bfloat16"}},
]
TOL = 2e-3  # fp32 logprobs, vLLM's kernels vs transformers' eager attention


@pytest.fixture(scope="module")
def runs(tiny_random_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("backend") / "results.json"
    return run_engines({"model": str(tiny_random_model), "engines": ENGINES}, out)


def test_hybrid_kv_groups_on_cpu(runs: dict[str, Any]) -> None:
    """Global layers keep full-attention KV, local layers get the sink+window spec, in separate groups."""
    groups = runs["local"]["groups"]
    by_layer = {name: g["spec"] for g in groups for name in g["layers"]}
    assert by_layer["model.layers.1.self_attn.attn"] == "FullAttentionSpec"
    for i in (0, 2, 3):
        assert by_layer[f"model.layers.{i}.self_attn.attn"] == "SinkWindowSpec"
    assert {g["spec"] for g in runs["stock"]["groups"]} == {"FullAttentionSpec"}


def test_window_covering_sequence_is_identical_to_stock(runs: dict[str, Any]) -> None:
    for a, b in zip(runs["stock"]["outputs"], runs["wide"]["outputs"], strict=True):
        assert a["tokens"] == b["tokens"]
        assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=True)) < 1e-4
        assert _max_diff(a["prompt_logprobs"], b["prompt_logprobs"]) < 1e-4


def test_stock_matches_reference(runs: dict[str, Any], tiny_random_model: Path) -> None:
    """Sanity of the oracle itself: full masks reproduce stock vLLM."""
    ids = _prompts(PROMPT_LENS)[0]
    ref = reference_logprobs(tiny_random_model, ids, masks(len(ids), local_layers=set(), window=W, sinks=S))
    assert _max_diff(runs["stock"]["outputs"][0]["prompt_logprobs"], ref) < TOL


def test_local_layers_match_reference_prefill_and_decode(runs: dict[str, Any], tiny_random_model: Path) -> None:
    for ids, out in zip(_prompts(PROMPT_LENS), runs["local"]["outputs"], strict=True):
        full = ids + out["tokens"]
        ref = reference_logprobs(tiny_random_model, full, masks(len(full), local_layers={0, 2, 3}, window=W, sinks=S))
        assert _max_diff(out["prompt_logprobs"], ref[: len(ids)]) < TOL
        # Decode steps: the generated tokens' logprobs, teacher-forced through the reference.
        assert max(abs(x - y) for x, y in zip(out["logprobs"], ref[len(ids):], strict=True)) < TOL


def _mean_diff(a: list[float | None], b: list[float | None], start: int = 1) -> float:
    pairs = [(x, y) for x, y in zip(a[start:], b[start:], strict=True) if x is not None and y is not None]
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def test_bf16_local_layers_match_reference_within_bf16_rounding(runs: dict[str, Any],
                                                                tiny_random_model: Path) -> None:
    """bf16 (the AMX layout on CPUs that have it): beyond the window the local path is as close to the fp32
    local reference as stock bf16 is to the fp32 full one, and far from full attention (reading wrong or
    stale blocks would land in between or beyond)."""
    ids = _prompts(PROMPT_LENS)[0]
    local_ref = reference_logprobs(tiny_random_model, ids, masks(len(ids), local_layers={0, 2, 3}, window=W, sinks=S))
    full_ref = reference_logprobs(tiny_random_model, ids, masks(len(ids), local_layers=set(), window=W, sinks=S))
    beyond = W + S + 1
    got = runs["local_bf16"]["outputs"][0]["prompt_logprobs"]
    rounding = _mean_diff(runs["stock_bf16"]["outputs"][0]["prompt_logprobs"], full_ref, start=beyond)
    error = _mean_diff(got, local_ref, start=beyond)
    assert error < 2 * rounding + 1e-3, (error, rounding)
    assert error < 0.2 * _mean_diff(local_ref, full_ref, start=beyond)
    for prompt, out in zip(_prompts(PROMPT_LENS), runs["local_bf16"]["outputs"], strict=True):  # decode steps
        full = prompt + out["tokens"]
        ref = reference_logprobs(tiny_random_model, full, masks(len(full), local_layers={0, 2, 3}, window=W, sinks=S))
        assert max(abs(x - y) for x, y in zip(out["logprobs"], ref[len(prompt):], strict=True)) < 0.1


def test_local_differs_from_full_beyond_the_window(runs: dict[str, Any]) -> None:
    stock, local = runs["stock"]["outputs"][0], runs["local"]["outputs"][0]
    assert _max_diff(stock["prompt_logprobs"][: W + S], local["prompt_logprobs"][: W + S]) < 1e-4
    assert _max_diff(stock["prompt_logprobs"], local["prompt_logprobs"], start=W + S + 1) > 1e-2


def test_sinks_change_the_output(runs: dict[str, Any], tiny_random_model: Path) -> None:
    ids = _prompts(PROMPT_LENS)[0]
    nosink = runs["nosink"]["outputs"][0]["prompt_logprobs"]
    sink = runs["local"]["outputs"][0]["prompt_logprobs"]
    assert _max_diff(nosink, sink, start=W + 1) > 1e-2
    ref = reference_logprobs(tiny_random_model, ids, masks(len(ids), local_layers={0, 2, 3}, window=W, sinks=0))
    assert _max_diff(nosink, ref) < TOL


def test_global_layers_are_global(runs: dict[str, Any], tiny_random_model: Path) -> None:
    """Layer 1 is configured global: treating it as local in the reference must not match vLLM."""
    ids = _prompts(PROMPT_LENS)[0]
    got = runs["local"]["outputs"][0]["prompt_logprobs"]
    all_local = reference_logprobs(tiny_random_model, ids, masks(len(ids), local_layers={0, 1, 2, 3}, window=W, sinks=S))
    assert _max_diff(got, all_local) > 1e-2


def test_prefix_cache_hits_give_the_same_output(runs: dict[str, Any]) -> None:
    """With prefix caching on (vLLM's default), a repeated prompt reuses cached blocks, sinks included."""
    first, second = runs["local_cached"]["passes"]
    assert second[0]["cached"] >= 256  # the 300-token prompt: 9 of its 32-token blocks came from the cache
    for ref, a, b in zip(runs["local"]["outputs"], first, second, strict=True):
        assert ref["tokens"] == a["tokens"] == b["tokens"]
        assert max(abs(x - y) for x, y in zip(ref["logprobs"], b["logprobs"], strict=True)) < 1e-4


def test_min_context_length_switches_at_threshold(runs: dict[str, Any], tiny_random_model: Path) -> None:
    short, long_, _ = runs["minctx"]["outputs"]
    ids_short, ids_long, _ = _prompts((MIN_CTX - 1, 300, 140), seed=1)
    # Shorter than minContextLength: every layer full, prompt and the decode steps before the threshold.
    full = ids_short + short["tokens"]
    ref_full = reference_logprobs(tiny_random_model, full, masks(len(full), local_layers=set(), window=W, sinks=S))
    assert _max_diff(short["prompt_logprobs"], ref_full[: len(ids_short)]) < TOL
    assert abs(short["logprobs"][0] - ref_full[len(ids_short)]) < TOL  # query at position MIN_CTX - 2: full
    # From position MIN_CTX - 1 on, local: the decode crosses the threshold, the long prefill is split inside.
    ref_switch = reference_logprobs(tiny_random_model, full, masks(
        len(full), local_layers={0, 2, 3}, window=W, sinks=S, first_local=MIN_CTX - 1))
    assert max(abs(x - y) for x, y in zip(short["logprobs"], ref_switch[len(ids_short):], strict=True)) < TOL
    ref_long = reference_logprobs(tiny_random_model, ids_long, masks(
        len(ids_long), local_layers={0, 2, 3}, window=W, sinks=S, first_local=MIN_CTX - 1))
    assert _max_diff(long_["prompt_logprobs"], ref_long) < TOL
    off_by_one = reference_logprobs(tiny_random_model, ids_long, masks(
        len(ids_long), local_layers={0, 2, 3}, window=W, sinks=S, first_local=MIN_CTX))
    assert abs(long_["prompt_logprobs"][MIN_CTX] - off_by_one[MIN_CTX]) > 1e-3


# ---------------------------------------------------------------------------------- under torch.compile
# vLLM's default on CPU compiles the whole model with Inductor (no splitting ops); attention stays the opaque
# custom op `vllm.unified_attention_with_output`, which looks our impl up and calls its forward at runtime.
# The module's other engines all run with enforce_eager; these compare compiled against eager directly.
COMPILED = {"enforce_eager": False}
COMPILE_ENGINES = [
    {"name": "compiled_local", "config": LOCAL, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True,
     "engine_args": COMPILED},
    {"name": "compiled_stock", "config": None, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True,
     "engine_args": COMPILED},
    {"name": "eager_local", "config": LOCAL, "prompts": _prompts(PROMPT_LENS), "prompt_logprobs": True},
]
COMPILE_TOL = 1e-4  # fp32 logprobs, Inductor's fused kernels around attention vs eager (measured: 1e-6)


def test_local_attention_under_torch_compile(tiny_random_model: Path, tmp_path: Path) -> None:
    """A compiled engine runs our local layers exactly as eager does (prefill and decode), and it differs from
    compiled stock beyond the window: the plugin really ran inside the compiled model."""
    runs = run_engines({"model": str(tiny_random_model), "engines": COMPILE_ENGINES}, tmp_path / "compiled.json")
    assert runs["eager_local"]["compilation_mode"] == "NONE"
    assert runs["compiled_local"]["compilation_mode"] != "NONE"  # DYNAMO_TRACE_ONCE on vLLM 0.32 CPU
    compiled, stock = runs["compiled_local"]["outputs"], runs["compiled_stock"]["outputs"]
    for c, e in zip(compiled, runs["eager_local"]["outputs"], strict=True):
        assert c["tokens"] == e["tokens"]
        assert max(abs(x - y) for x, y in zip(c["logprobs"], e["logprobs"], strict=True)) < COMPILE_TOL
        assert _max_diff(c["prompt_logprobs"], e["prompt_logprobs"]) < COMPILE_TOL
    long_local, long_stock = compiled[0]["prompt_logprobs"], stock[0]["prompt_logprobs"]
    assert _max_diff(long_local[: W + S], long_stock[: W + S]) < COMPILE_TOL  # within the window: identical
    assert _max_diff(long_local, long_stock, start=W + S + 1) > 1e-2


FP8_SCRIPT = r"""
import sys
from vllm import LLM
try:
    LLM(sys.argv[1], enforce_eager=True, kv_cache_dtype="fp8", max_model_len=1024, distributed_executor_backend="uni")
except NotImplementedError as e:
    print("REFUSED:", e)
"""


def test_quantized_kv_cache_is_refused_at_startup(tiny_random_model: Path) -> None:
    """Local kernels read the cache in the model dtype: an fp8 KV cache must fail when the engine starts."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "LOCALATTN_CONFIG_JSON": json.dumps(LOCAL)}
    proc = subprocess.run([sys.executable, "-c", FP8_SCRIPT, str(tiny_random_model)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert "REFUSED: localattn: local layers need an unquantized KV cache" in proc.stdout, proc.stderr[-3000:]
