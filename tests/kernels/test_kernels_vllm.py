"""Semantics cross-checked against vLLM 0.32's own CPU attention kernel (same cache, same metadata).

With S = 0 our rule is vLLM's sliding window (key j visible iff i - W < j <= i); with W >= length it is
vLLM's full causal attention. This pins the meaning of W to the engine the runtime runs in.
"""

from __future__ import annotations

import pytest
import torch

from localattn_kernels import cpu
from localattn_kernels.testing import make_case

from .cases import MIXED, TOL, WINDOW

ops = pytest.importorskip("vllm._custom_ops")


@pytest.mark.parametrize(
    ("dtype", "window"), [(torch.float32, WINDOW), (torch.bfloat16, WINDOW), (torch.float32, -1)]
)
def test_matches_vllm_cpu_kernel(dtype: torch.dtype, window: int) -> None:
    num_heads, num_kv_heads, head_size = 8, 2, 64
    case = make_case(
        MIXED, num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, block_size=32, dtype=dtype
    )
    scale = head_size**-0.5
    metadata = ops.cpu_attn_get_scheduler_metadata(
        len(MIXED), num_heads, num_kv_heads, head_size, case.seq_lens, dtype, case.query_start_loc,
        True, window, "vec", False,
    )  # fmt: skip
    theirs = torch.empty_like(case.query)
    ops.cpu_attention_with_kv_cache(
        case.query, case.key_cache, case.value_cache, theirs, case.query_start_loc, case.seq_lens, scale, True,
        None, window, case.block_table, 0.0, metadata, None,
    )  # fmt: skip
    ours_window = window if window > 0 else 10**9
    ours = cpu.paged_local_attention(
        case.query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
        query_start_loc=case.query_start_loc, window=ours_window, sinks=0, scale=scale,
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, **TOL[dtype])
    torch.testing.assert_close(case.reference(window=ours_window, sinks=0, scale=scale), theirs, **TOL[dtype])
