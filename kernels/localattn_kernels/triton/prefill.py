"""Triton prefill / chunked prefill / mixed batch over the paged KV cache.

Math: one program owns ``BLOCK_Q`` consecutive query tokens of one request times the ``GROUP`` query heads
of one KV head (``BLOCK_M = BLOCK_Q * GROUP`` rows, so K/V tiles are loaded once per group). For queries at
positions ``[first, last]`` it walks two key ranges, never anything else:
sinks ``[0, min(S, last + 1))`` with ``allowed = j < S and j <= i``, and the window
``[max(first - W + 1, S), last]`` with ``allowed = j >= S and i - W < j <= i`` (disjoint, union = the rule
``j <= i and (j < S or j > i - W)``), with an online softmax in fp32. Queries at positions below ``full_below``
(the runtime's minContextLength rule) attend to their whole prefix: a program holding one starts its window
walk at ``S`` and lets those rows through the window test.
Programs find their request by binary search over ``query_start_loc // BLOCK_Q + r`` (as vLLM's unified
attention does), so the launch needs no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localattn_kernels.triton.common import (
    LOG2E,
    attend_tile,
    padded_head_size,
    tile_sizes,
    upcast_dots,
)


@triton.jit
def _find_seq(qsl_ptr, num_seqs, target, BLOCK_Q: tl.constexpr):
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        val = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
        if val <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# As in decode: one compiled kernel per shape for every window, sink count, minContextLength and batch size.
@triton.jit(do_not_specialize=["window", "sinks", "full_below", "num_seqs"])
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    block_table_ptr, seq_lens_ptr, qsl_ptr, num_seqs,
    scale_log2e, window, sinks, full_below,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_bt,
    GROUP: tl.constexpr, HEAD_SIZE: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_idx = _find_seq(qsl_ptr, num_seqs, pid, BLOCK_Q)
    q_start = tl.load(qsl_ptr + seq_idx)
    q_len = tl.load(qsl_ptr + seq_idx + 1) - q_start
    tile = pid - (q_start // BLOCK_Q + seq_idx)
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq_idx)
    ctx = seq_len - q_len

    m = tl.arange(0, BLOCK_M)
    tok = tile * BLOCK_Q + m // GROUP
    head = kvh * GROUP + m % GROUP
    row_ok = (m < BLOCK_Q * GROUP) & (tok < q_len)
    pos = ctx + tok
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_SIZE
    q = tl.load(
        q_ptr + (q_start + tok)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    first = ctx + tile * BLOCK_Q
    last = tl.minimum(first + BLOCK_Q - 1, seq_len - 1)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    sink_hi = tl.minimum(sinks, last + 1)
    for start in range(0, sink_hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        allowed = (j[None, :] < sinks) & (j[None, :] <= pos[:, None]) & row_ok[:, None]
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, j, allowed, j < sink_hi, seq_idx, kvh,
            k_ptr, v_ptr, block_table_ptr, stride_bt,
            stride_kb, stride_kt, stride_kh, stride_kd,
            stride_vb, stride_vt, stride_vh, stride_vd,
            scale_log2e, PAGE, BLOCK_D, HEAD_SIZE, UPCAST,
        )  # fmt: skip

    win_lo = tl.where(first < full_below, sinks, tl.maximum(first - window + 1, sinks))
    for start in range((win_lo // BLOCK_N) * BLOCK_N, last + 1, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        jj = j[None, :]
        in_window = (jj > pos[:, None] - window) | (pos[:, None] < full_below)
        allowed = (jj >= sinks) & (jj <= pos[:, None]) & in_window & row_ok[:, None]
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, j, allowed, (j >= win_lo) & (j <= last), seq_idx, kvh,
            k_ptr, v_ptr, block_table_ptr, stride_bt,
            stride_kb, stride_kt, stride_kh, stride_kd,
            stride_vb, stride_vt, stride_vh, stride_vd,
            scale_log2e, PAGE, BLOCK_D, HEAD_SIZE, UPCAST,
        )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        o_ptr + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :] * stride_od,
        (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


def prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    *,
    window: int,
    sinks: int,
    scale: float,
    full_below: int = 0,
    block_m: int | None = None,
    block_n: int | None = None,
) -> None:
    """Launch the prefill kernel over every request (any query lengths, including 1)."""
    num_tokens, num_heads, head_size = query.shape
    page, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    _, default_m, default_n = tile_sizes(query.dtype)
    block_m = block_m or default_m
    block_n = block_n or default_n
    block_q = max(1, block_m // triton.next_power_of_2(group))
    block_m = max(16, triton.next_power_of_2(block_q * group))
    num_seqs = seq_lens.shape[0]
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        query, key_cache, value_cache, out,
        block_table, seq_lens, query_start_loc, num_seqs,
        scale * LOG2E, window, sinks, full_below,
        *query.stride(), *out.stride(), *key_cache.stride(), *value_cache.stride(), block_table.stride(0),
        GROUP=group, HEAD_SIZE=head_size, BLOCK_D=padded_head_size(head_size),
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, PAGE=page, UPCAST=upcast_dots(query.dtype),
    )  # fmt: skip
