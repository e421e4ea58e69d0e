"""A local layer's attention on GPU tensors (per-token minContextLength split, then the Triton kernels).

Kept free of vLLM imports on purpose: the GPU backend calls it inside vLLM, and `benchmarks/device_check.sh`
runs it on a GPU machine that has torch and Triton but no vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from localattn_runtime.dispatch import split_queries

if TYPE_CHECKING:
    from localattn_runtime.config import LocalAttnConfig


def local_forward(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, out: torch.Tensor, *,
                  block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                  max_query_len: int, cfg: LocalAttnConfig, scale: float, max_model_len: int) -> None:
    """A local layer's attention for one step, written into `out` ([num_tokens, heads, head_size]).

    Queries below minContextLength run the same kernel with a window longer than any sequence and no sinks,
    which is exactly causal full attention.
    """
    from localattn_kernels.triton import paged_local_attention

    n = int(query_start_loc[-1])
    split = split_queries(query_start_loc, seq_lens, cfg.min_context_length)
    if split.local is not None and split.full is None:
        paged_local_attention(query[:n], key_cache, value_cache, block_table=block_table, seq_lens=seq_lens,
                              query_start_loc=query_start_loc, window=cfg.window_size, sinks=cfg.sink_tokens,
                              scale=scale, out=out[:n], max_query_len=max_query_len)
        return
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
