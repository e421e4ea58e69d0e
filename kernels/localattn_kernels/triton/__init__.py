"""Triton sink + sliding-window attention over vLLM's paged GPU KV cache (used by the runtime's GPU backend).

Layout: ``key_cache``/``value_cache`` are vLLM's Triton-backend views ``[num_blocks, block_size, num_kv_heads,
head_size]`` (any strides; see :mod:`localattn_kernels.layout`). Under ``TRITON_INTERPRET=1`` (set before this
module is imported) the same kernels run on CPU tensors, which is how CI tests them.
"""

from __future__ import annotations

import torch

from localattn_kernels.checks import check_batch, check_layer_tensors
from localattn_kernels.triton.common import interpreting, tile_sizes
from localattn_kernels.triton.decode import decode
from localattn_kernels.triton.prefill import prefill

__all__ = ["decode", "paged_local_attention", "prefill"]


def default_num_splits(
    num_seqs: int, num_kv_heads: int, window: int, sinks: int, query: torch.Tensor
) -> int:
    """Split the KV range until the launch has ~2 programs per SM (decode at small batch is latency-bound)."""
    tile = tile_sizes(query.dtype)[0]
    if query.device.type != "cuda":
        return 1 if window + sinks <= tile else 2
    sms = torch.cuda.get_device_properties(query.device).multi_processor_count
    programs = max(1, num_seqs * num_kv_heads)
    by_sm = -(-2 * sms // programs)
    by_len = max(1, (window + sinks) // tile)  # at least one tile per split
    return max(1, min(by_sm, by_len, 32))


def paged_local_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    *,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    window: int,
    sinks: int,
    scale: float,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    num_splits: int | None = None,
    full_below: int = 0,
) -> torch.Tensor:
    """Same contract as :func:`localattn_kernels.cpu.paged_local_attention`, on GPU tensors.

    ``max_query_len`` (vLLM's metadata has it) avoids a device sync to choose between the decode kernel
    (all requests have one query; split-KV + LSE combine) and the prefill kernel (anything else).
    ``full_below``: queries at positions below it attend to their whole prefix (causal full attention), the
    rest by the sinks + window rule; the runtime's minContextLength, applied per token inside the kernels
    so that the host never reads the batch.
    """
    check_layer_tensors(query, key_cache, value_cache, window, sinks, head_dim_axis=3, heads_axis=2, block_axis=1)
    check_batch(block_table, seq_lens, query_start_loc)
    if isinstance(full_below, bool) or not isinstance(full_below, int) or full_below < 0:
        raise ValueError(f"full_below must be an int >= 0, got {full_below!r}")
    if query.device.type != "cuda" and not interpreting():
        raise ValueError(
            "localattn_kernels.triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU testing)"
        )
    if query.stride(-1) != 1 or key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("query, key_cache and value_cache need a contiguous last (head_size) dimension")
    if out is None:
        out = torch.empty_like(query)
    if out.shape[0] != query.shape[0] or out.numel() != query.numel() or out.dtype != query.dtype:
        raise ValueError(
            f"out must match query ({tuple(query.shape)}, {query.dtype}), got {tuple(out.shape)}, {out.dtype}"
        )
    out3 = out.view(query.shape)
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max()) if seq_lens.numel() else 0
    if seq_lens.numel() == 0 or max_query_len == 0:
        return out3
    if max_query_len == 1:
        splits = num_splits or default_num_splits(
            seq_lens.shape[0], key_cache.shape[2], window, sinks, query
        )
        decode(
            query, key_cache, value_cache, out3, block_table, seq_lens, query_start_loc,
            window=window, sinks=sinks, scale=scale, num_splits=splits, full_below=full_below,
        )  # fmt: skip
    else:
        prefill(
            query, key_cache, value_cache, out3, block_table, seq_lens, query_start_loc,
            window=window, sinks=sinks, scale=scale, full_below=full_below,
        )  # fmt: skip
    return out3
