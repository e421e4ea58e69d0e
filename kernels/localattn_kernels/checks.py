"""Argument validation shared by every path, so each raises the same clear ``ValueError``."""

from __future__ import annotations

import torch

from localattn_kernels.layout import DTYPES


def check_window_sinks(window: int, sinks: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in DTYPES:
        raise ValueError(f"{name} dtype {t.dtype} not supported (expected one of {DTYPES})")


def check_gqa(num_heads: int, num_kv_heads: int) -> int:
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    return num_heads // num_kv_heads


def check_index(name: str, t: torch.Tensor, dim: int) -> None:
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(t.shape)}")


def check_layer_tensors(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    window: int,
    sinks: int,
    *,
    head_dim_axis: int,
    heads_axis: int,
    block_axis: int,
) -> int:
    """The paged-attention arguments that stay the same for every step of a layer (shapes, dtypes, heads,
    window; the cache axes are the path's layout), so a caller can check them once. Returns the GQA group size.
    :func:`check_batch` checks the step's part."""
    check_window_sinks(window, sinks)
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_heads, head_size], got shape {tuple(query.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(
            f"key_cache and value_cache must be 4-D with equal shapes, got {tuple(key_cache.shape)} "
            f"and {tuple(value_cache.shape)}"
        )
    for name, t in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_dtype(name, t)
    if not query.dtype == key_cache.dtype == value_cache.dtype:
        raise ValueError(
            f"dtype mismatch: query {query.dtype}, key_cache {key_cache.dtype}, value_cache {value_cache.dtype}"
        )
    if key_cache.shape[head_dim_axis] != query.shape[2]:
        raise ValueError(
            f"head_size mismatch: query {query.shape[2]}, cache {key_cache.shape[head_dim_axis]}"
        )
    group = check_gqa(query.shape[1], key_cache.shape[heads_axis])
    if key_cache.shape[block_axis] < 1:
        raise ValueError("block_size must be >= 1")
    return group


def check_batch(block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor) -> None:
    """The step's batch metadata: index dtypes, ranks, and R+1 / R / >=R entries for R requests."""
    check_index("block_table", block_table, 2)
    check_index("seq_lens", seq_lens, 1)
    check_index("query_start_loc", query_start_loc, 1)
    if query_start_loc.shape[0] != seq_lens.shape[0] + 1 or block_table.shape[0] < seq_lens.shape[0]:
        raise ValueError(
            f"batch mismatch: query_start_loc has {query_start_loc.shape[0]} entries, seq_lens "
            f"{seq_lens.shape[0]}, block_table {block_table.shape[0]} rows (need R+1, R, >=R)"
        )


def check_lengths(
    q_lens: list[int], seq_lens: list[int], max_blocks: int, block_size: int, num_tokens: int
) -> None:
    """Host-side checks of per-request lengths (CPU path: the metadata is on the host anyway)."""
    for r, (ql, sl) in enumerate(zip(q_lens, seq_lens, strict=True)):
        if ql < 0 or ql > sl:
            raise ValueError(f"request {r}: query length {ql} must be in [0, seq_len={sl}]")
        if -(-sl // block_size) > max_blocks:
            raise ValueError(
                f"request {r}: seq_len {sl} needs more blocks than block_table has ({max_blocks})"
            )
    if sum(q_lens) > num_tokens:
        raise ValueError(f"query_start_loc covers {sum(q_lens)} tokens but query has {num_tokens}")
