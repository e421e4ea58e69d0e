"""A local layer's attention on GPU tensors (per-token minContextLength split, then the Triton kernels).

Kept free of vLLM imports on purpose: the GPU backend calls it inside vLLM, and `benchmarks/device_check.sh`
runs it on a GPU machine that has torch and Triton but no vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from localattn_runtime import layers
from localattn_runtime.dispatch import QuerySplit, split_queries

if TYPE_CHECKING:
    from localattn_runtime.config import LocalAttnConfig


def local_forward(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, out: torch.Tensor, *,
                  block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                  num_actual_tokens: int, max_query_len: int, cfg: LocalAttnConfig, scale: float,
                  max_model_len: int) -> None:
    """A local layer's attention for one step, written into `out[:num_actual_tokens]` ([tokens, heads, head_size]).

    Without dynamic scope (minContextLength <= 1, the default) every query attends locally and nothing here
    reads the device: the host values come from vLLM's metadata (`num_actual_tokens`, `max_query_len`), the
    kernels' grids from shapes, so the CPU keeps queueing work while the GPU runs. With dynamic scope the split
    is decided per token from the batch's lengths, which must be read on the host (`split_queries`); queries
    below minContextLength then run the same kernel with a window longer than any sequence and no sinks,
    which is exactly causal full attention.
    """
    from localattn_kernels.triton import paged_local_attention

    n = num_actual_tokens
    if layers.first_local_position(cfg.min_context_length) > 0:
        split = split_queries(query_start_loc, seq_lens, cfg.min_context_length)
        if split.full is not None:
            _attend_parts(split, query, key_cache, value_cache, out, block_table=block_table, seq_lens=seq_lens,
                          query_start_loc=query_start_loc, cfg=cfg, scale=scale, max_model_len=max_model_len)
            return
        if split.local is None:  # an empty step
            return
    paged_local_attention(query[:n], key_cache, value_cache, block_table=block_table, seq_lens=seq_lens,
                          query_start_loc=query_start_loc, window=cfg.window_size, sinks=cfg.sink_tokens,
                          scale=scale, out=out[:n], max_query_len=max_query_len)


def _attend_parts(split: QuerySplit, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                  out: torch.Tensor, *, block_table: torch.Tensor, seq_lens: torch.Tensor,
                  query_start_loc: torch.Tensor, cfg: LocalAttnConfig, scale: float, max_model_len: int) -> None:
    """A step whose queries are partly below minContextLength: each part as a batch of its own."""
    from localattn_kernels.triton import paged_local_attention

    for part, window, sinks in ((split.full, max_model_len + 1, 0), (split.local, cfg.window_size, cfg.sink_tokens)):
        if part is None:
            continue
        q = query.index_select(0, part.index)
        o = torch.empty_like(q)
        paged_local_attention(q, key_cache, value_cache, block_table=block_table[part.rows],
                              seq_lens=part.seq_lens.to(seq_lens.dtype),
                              query_start_loc=part.query_start_loc.to(query_start_loc.dtype), window=window,
                              sinks=sinks, scale=scale, out=o, max_query_len=part.max_query_len)
        out.index_copy_(0, part.index, o)
