"""The GPU backend: its CUDA-graph declaration, the features it refuses, its impl's forward as vLLM calls it,
and its local-layer path (`triton_forward.local_forward`: the Triton kernels with window, sinks and
minContextLength) against the torch reference, under TRITON_INTERPRET=1 on CPU when no GPU is present (in a fresh
interpreter: Triton binds interpret mode at import). The path must not read the device from the host; on a GPU
it must also survive CUDA graph capture and replay with moved lengths (that part needs a GPU:
`benchmarks/device_check.sh` runs this test there). The vLLM engine-level GPU run needs vLLM on a GPU: see
docs/runtime.md."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

SCRIPT = r"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from localattn_kernels.reference import local_attention
from localattn_kernels.testing import make_case
from localattn_runtime.triton_forward import local_forward
from localattn_runtime.config import parse

aten = torch.ops.aten
WAITS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.equal.default, aten.masked_select.default,
         aten.repeat_interleave.Tensor}

class NoHostReads(TorchDispatchMode):
    # Ops that make the host wait for a GPU: item()/int()/bool() of a tensor (_local_scalar_dense), nonzero,
    # equal, boolean masks, repeat_interleave without an output size. (.cpu()/.tolist() are no-ops on CPU
    # tensors and go unseen here; on a GPU, torch.cuda.set_sync_debug_mode("error") below sees everything.)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in WAITS and not (func is aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size")) \
                or bool_index:
            raise AssertionError(f"host read of a device tensor: {func}")
        return func(*args, **(kwargs or {}))

device = "cuda" if torch.cuda.is_available() else "cpu"
reqs = [(1, 200), (40, 180), (7, 7), (30, 100), (1, 159), (1, 160)]  # (queries, sequence length)
case = make_case(reqs, num_heads=4, num_kv_heads=2, head_size=32, block_size=16, dtype=torch.float32,
                 gpu_layout=True, device=device)
n = case.query.shape[0]

def run(cfg, out):
    local_forward(case.query, case.key_cache, case.value_cache, out, block_table=case.block_table,
                  seq_lens=case.seq_lens, query_start_loc=case.query_start_loc, num_actual_tokens=n,
                  max_query_len=40, cfg=cfg, scale=0.2)

full = case.reference(window=10**6, sinks=0, scale=0.2)
local = case.reference(window=24, sinks=3, scale=0.2)
pos = torch.cat([torch.arange(s - q, s) for q, s in reqs]).to(device)
for cfg in (parse({"windowSize": 24, "sinkTokens": 3, "minContextLength": 160}),
            parse({"windowSize": 24, "sinkTokens": 3})):
    out = torch.zeros_like(case.query)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    with NoHostReads():  # nothing may wait for the device, minContextLength included
        run(cfg, out)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    expected = torch.where((pos >= cfg.min_context_length - 1)[:, None, None], local, full)
    err = (out - expected).abs().max().item()
    assert err < 1e-4, err
    assert (out - full).abs().max().item() > 1e-2  # the local rows really are local

if device == "cuda":
    # A decode step captured in a CUDA graph, then replayed after the lengths moved: the kernels must read
    # seq_lens from the device at replay, not keep what they saw at capture. W = 150 over 16-key fp32 tiles
    # splits the keys (split-KV + LSE combine in the graph); minContextLength 300 puts one moved row below it.
    cfg = parse({"windowSize": 150, "sinkTokens": 3, "minContextLength": 300})  # full below position 299
    dec = make_case([(1, 700), (1, 420), (1, 310)], num_heads=4, num_kv_heads=2, head_size=32, block_size=16,
                    dtype=torch.float32, gpu_layout=True, device=device)
    query, seq_lens, out = dec.query.clone(), dec.seq_lens.clone(), torch.zeros_like(dec.query)
    step = lambda: local_forward(query, dec.key_cache, dec.value_cache, out, block_table=dec.block_table,
                                 seq_lens=seq_lens, query_start_loc=dec.query_start_loc, num_actual_tokens=3,
                                 max_query_len=1, cfg=cfg, scale=0.2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    moved = [650, 250, 305]  # positions 649 (local), 249 (full: below 299), 304 (local)
    seq_lens.copy_(torch.tensor(moved, dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    starts = dec.cu_seqlens_k[:3].tolist()
    keys = torch.cat([dec.keys[a : a + m] for a, m in zip(starts, moved)])
    values = torch.cat([dec.values[a : a + m] for a, m in zip(starts, moved)])
    cu_k = torch.tensor([0, *torch.tensor(moved).cumsum(0).tolist()], dtype=torch.int32, device=device)
    ref = lambda w, s: local_attention(query, keys, values, cu_seqlens_q=dec.query_start_loc, cu_seqlens_k=cu_k,
                                       window=w, sinks=s, scale=0.2)
    full, local = ref(10**6, 0), ref(150, 3)
    assert (full[0] - local[0]).abs().max().item() > 1e-2 and (full[1] - local[1]).abs().max().item() > 1e-2
    want = torch.stack([local[0], full[1], local[2]])
    err = (out - want).abs().max().item()
    assert err < 1e-4, ("CUDA graph replay", err)
print("ok")
"""


# The impl's forward as vLLM 0.32 calls it (`unified_attention_with_output`): vLLM's own TritonAttentionImpl
# constructor and TritonAttentionMetadata, the KV cache as the one [num_blocks, Hkv, block_size, 2 * D] tensor
# vLLM allocates, query/output as [tokens, H, D] views with padding rows past the step's tokens. The layer's
# local/global resolution (`LocalLayerMixin._is_local`, shared with the CPU backend) is tested there; here it is
# set, so this checks the glue: the KV view, the metadata fields, the output rows written and those left alone.
IMPL_SCRIPT = r"""
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadata
from localattn_kernels.testing import make_case
from localattn_runtime.backend_gpu import LocalAttnTritonBackend
from localattn_runtime.config import parse

device = "cuda" if torch.cuda.is_available() else "cpu"
reqs = [(1, 200), (40, 180), (7, 7)]
case = make_case(reqs, num_heads=4, num_kv_heads=2, head_size=32, block_size=16, dtype=torch.float16,
                 gpu_layout=True, device=device)
with set_current_vllm_config(VllmConfig()):  # vLLM builds impls inside this context
    impl = LocalAttnTritonBackend.get_impl_cls()(num_heads=4, head_size=32, scale=0.2, num_kv_heads=2,
                                                 alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto")
impl._local, impl._cfg = True, parse({"windowSize": 24, "sinkTokens": 3, "minContextLength": 160})
n = case.query.shape[0]
query = torch.cat([case.query, torch.randn(5, 4, 32, dtype=torch.float16, device=device)])  # 5 padding rows
output = torch.full_like(query, 7.0)
i32 = lambda *s: torch.zeros(*s, dtype=torch.int32, device=device)
meta = TritonAttentionMetadata(
    num_actual_tokens=n, max_query_len=40, query_start_loc=case.query_start_loc, max_seq_len=200,
    seq_lens=case.seq_lens, block_table=case.block_table, slot_mapping=i32(n).long(), seq_threshold_3D=0,
    num_par_softmax_segments=0, softmax_segm_output=None, softmax_segm_max=None, softmax_segm_expsum=None,
    causal=True)
got = impl.forward(None, query, None, None, case.kv_cache, meta, output)
assert got is output
full = case.reference(window=10**6, sinks=0, scale=0.2)
local = case.reference(window=24, sinks=3, scale=0.2)
pos = torch.cat([torch.arange(s - q, s) for q, s in reqs]).to(device)
expected = torch.where((pos >= 159)[:, None, None], local, full)
err = (output[:n].float() - expected.float()).abs().max().item()
assert err < 4e-3, err
assert bool((output[n:] == 7.0).all())  # padding rows untouched
print("ok")
"""

def test_builder_keeps_local_forward_out_of_cuda_graphs() -> None:
    """vLLM's Triton builder declares ALWAYS (decode captured in FULL graphs, attention included); ours must say
    NEVER, so that vLLM downgrades to PIECEWISE and our forward runs eagerly between the pieces (see the builder's
    docstring for why FULL graphs are not claimed)."""
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadataBuilder

    from localattn_runtime.backend_gpu import LocalAttnTritonBackend

    assert LocalAttnTritonBackend.get_name() == "CUSTOM"
    builder = LocalAttnTritonBackend.get_builder_cls()
    assert issubclass(builder, TritonAttentionMetadataBuilder)
    assert builder is not TritonAttentionMetadataBuilder
    # vLLM's model runner asks the builder class; neither class reads the config or the KV spec.
    none: Any = None
    assert builder.get_cudagraph_support(none, none) == AttentionCGSupport.NEVER
    assert TritonAttentionMetadataBuilder.get_cudagraph_support(none, none) == AttentionCGSupport.ALWAYS


def _run_on_gpu_or_interpreted(script: str) -> None:
    """Run `script` in a fresh interpreter (Triton binds interpret mode at import): on the GPU when there is one,
    else with TRITON_INTERPRET=1; it must exit 0 and print "ok" last."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_local_forward_matches_reference() -> None:
    _run_on_gpu_or_interpreted(SCRIPT)


@pytest.mark.slow
def test_impl_forward_with_vllm_metadata_and_kv_cache() -> None:
    _run_on_gpu_or_interpreted(IMPL_SCRIPT)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({}, None),
    ({"alibi_slopes": [0.1] * 4}, "ALiBi"),
    ({"logits_soft_cap": 30.0}, "logits soft cap"),
    ({"sinks": "zeros"}, "learned attention sinks"),
    ({"kv_cache_dtype": "fp8"}, "unquantized KV cache"),
    ({"chunk_lookback": 2}, "chunked-local"),
])  # fmt: skip
def test_local_layers_refuse_what_the_kernels_cannot_do(kwargs: dict[str, Any], reason: str | None) -> None:
    """A layer whose vLLM attention carries ALiBi, a soft cap, learned sinks, an fp8 cache or chunked-local
    attention must not silently run plain local attention: `_is_local` raises with this reason at the first
    forward. And vLLM must not fuse output quantisation into our attention (the kernels write the model dtype)."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config

    from localattn_runtime.backend_gpu import LocalAttnTritonImpl

    args: dict[str, Any] = {"alibi_slopes": None, "sliding_window": None, "kv_cache_dtype": "auto", **kwargs}
    if args.get("sinks") == "zeros":
        args["sinks"] = torch.zeros(4)
    with set_current_vllm_config(VllmConfig()):
        impl = LocalAttnTritonImpl(num_heads=4, head_size=32, scale=0.2, num_kv_heads=2, **args)
    got = impl._unsupported()
    assert (got is None) if reason is None else (reason in (got or "")), got
    assert impl.fused_output_quant_supported(None) is False
