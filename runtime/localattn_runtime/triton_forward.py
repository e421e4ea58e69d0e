"""A local layer's attention on GPU tensors: the Triton kernels with the layer's window, sinks and minContextLength.

Kept free of vLLM imports on purpose: the GPU backend calls it inside vLLM, and `benchmarks/device_check.sh`
runs it on a GPU machine that has torch and Triton but no vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from localattn_runtime import layers

if TYPE_CHECKING:
    from localattn_runtime.config import LocalAttnConfig


def local_forward(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, out: torch.Tensor, *,
                  block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                  num_actual_tokens: int, max_query_len: int, cfg: LocalAttnConfig, scale: float) -> None:
    """A local layer's attention for one step, written into `out[:num_actual_tokens]` ([tokens, heads, head_size]).

    Nothing here reads the device: the host values come from vLLM's metadata (`num_actual_tokens`,
    `max_query_len`), the kernels' grids from shapes, and minContextLength is applied per token inside the
    kernels (`full_below`: queries before the first local position attend to their whole prefix). The CPU
    thus keeps queueing work while the GPU runs.
    """
    from localattn_kernels.triton import paged_local_attention

    n = num_actual_tokens
    paged_local_attention(query[:n], key_cache, value_cache, block_table=block_table, seq_lens=seq_lens,
                          query_start_loc=query_start_loc, window=cfg.window_size, sinks=cfg.sink_tokens,
                          scale=scale, out=out[:n], max_query_len=max_query_len,
                          full_below=layers.first_local_position(cfg.min_context_length))
