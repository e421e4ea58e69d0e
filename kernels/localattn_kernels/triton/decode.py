"""Triton decode (one query per request) over the paged KV cache, split over the KV length.

Math: the query at position ``p = seq_len - 1`` reads the ``n = min(S, L) + (L - max(L - W, S))`` keys of
sinks | window, enumerated as one virtual range ``v in [0, n)`` (sinks first, then the window); split ``s`` of
``NUM_SPLITS`` handles ``v in [s * L, (s + 1) * L)``, ``L = ceil(n / NUM_SPLITS)`` rounded up to the tile, with
an online softmax, and writes its normalised output and base-2 log-sum-exp; :func:`_combine_kernel` merges splits by
``o = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m)``. Nothing outside sinks | window is loaded. A query at a
position below ``full_below`` (the runtime's minContextLength rule) attends to its whole prefix instead: the
same enumeration with the window widened to the sequence and no separate sinks.
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


# The rule's integers are not specialised (Triton would compile another variant for a value of 1 or a multiple
# of 16): one compiled kernel per shape serves every window, sink count and minContextLength.
@triton.jit(do_not_specialize=["window", "sinks", "full_below"])
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_o_ptr, part_lse_ptr,
    block_table_ptr, seq_lens_ptr, qsl_ptr,
    scale_log2e, window, sinks, full_below,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_SIZE: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, UPCAST: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):  # fmt: skip
    seq_idx = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq_idx)
    q_row = tl.load(qsl_ptr + seq_idx)
    if tl.load(qsl_ptr + seq_idx + 1) == q_row:  # padded request without a query: write nothing
        return

    is_full = seq_len - 1 < full_below
    window = tl.where(is_full, seq_len, window)
    sinks = tl.where(is_full, 0, sinks)
    n_sink = tl.minimum(sinks, seq_len)
    win_lo = tl.maximum(seq_len - window, sinks)
    n_tok = n_sink + tl.maximum(seq_len - win_lo, 0)
    # Each query splits its own key count, so a full-attention query (below full_below) does not stretch the
    # splits of the local ones; a split left without keys writes lse = -inf, which the combine weighs 0.
    split_len = tl.cdiv(tl.cdiv(n_tok, NUM_SPLITS), BLOCK_N) * BLOCK_N
    v_lo = split * split_len
    v_hi = tl.minimum(v_lo + split_len, n_tok)

    m = tl.arange(0, BLOCK_M)
    head = kvh * GROUP + m
    row_ok = m < GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_SIZE
    q = tl.load(
        q_ptr + q_row * stride_qt + head[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for vs in range(v_lo, v_hi, BLOCK_N):
        vi = vs + tl.arange(0, BLOCK_N)
        j = tl.where(vi < n_sink, vi, win_lo + vi - n_sink)
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, j, (vi < v_hi)[None, :], vi < v_hi, seq_idx, kvh,
            k_ptr, v_ptr, block_table_ptr, stride_bt,
            stride_kb, stride_kt, stride_kh, stride_kd,
            stride_vb, stride_vt, stride_vh, stride_vd,
            scale_log2e, PAGE, BLOCK_D, HEAD_SIZE, UPCAST,
        )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    if NUM_SPLITS == 1:
        tl.store(
            o_ptr + q_row * stride_ot + head[:, None] * stride_oh + d[None, :] * stride_od,
            out.to(o_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )
    else:
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        base = (seq_idx * NUM_HEADS + head) * NUM_SPLITS + split
        tl.store(part_lse_ptr + base, lse, mask=row_ok)
        tl.store(
            part_o_ptr + base[:, None] * HEAD_SIZE + d[None, :], out, mask=row_ok[:, None] & d_ok[None, :]
        )


@triton.jit
def _combine_kernel(
    o_ptr, part_o_ptr, part_lse_ptr, qsl_ptr,
    stride_ot, stride_oh, stride_od,
    NUM_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    seq_idx = tl.program_id(0)
    head = tl.program_id(1)
    q_row = tl.load(qsl_ptr + seq_idx)
    if tl.load(qsl_ptr + seq_idx + 1) == q_row:
        return
    s = tl.arange(0, BLOCK_S)
    s_ok = s < NUM_SPLITS
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_SIZE
    base = (seq_idx * NUM_HEADS + head) * NUM_SPLITS + s
    lse = tl.load(part_lse_ptr + base, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - m))
    o = tl.load(
        part_o_ptr + base[:, None] * HEAD_SIZE + d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0
    )
    total = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(total == 0.0, 1.0, total)  # no keys at all (padding): 0, not NaN
    tl.store(
        o_ptr + q_row * stride_ot + head * stride_oh + d * stride_od,
        out.to(o_ptr.dtype.element_ty),
        mask=d_ok,
    )


def decode(
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
    num_splits: int,
    full_below: int = 0,
    block_n: int | None = None,
) -> None:
    """Launch the decode kernel (+ the LSE combine when ``num_splits > 1``); every request has <= 1 query."""
    num_seqs = seq_lens.shape[0]
    _, num_heads, head_size = query.shape
    page, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    block_n = block_n or tile_sizes(query.dtype)[0]
    block_d = padded_head_size(head_size)
    num_splits = max(1, min(num_splits, triton.cdiv(sinks + window, block_n)))  # a local query fills every split
    if num_splits > 1:
        part_o = torch.empty(
            (num_seqs, num_heads, num_splits, head_size), dtype=torch.float32, device=query.device
        )
        part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
    else:
        part_o = part_lse = out  # unused
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, out, part_o, part_lse,
        block_table, seq_lens, query_start_loc,
        scale * LOG2E, window, sinks, full_below,
        *query.stride(), *out.stride(), *key_cache.stride(), *value_cache.stride(), block_table.stride(0),
        NUM_HEADS=num_heads, GROUP=group, HEAD_SIZE=head_size, BLOCK_D=block_d,
        BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, PAGE=page, UPCAST=upcast_dots(query.dtype),
        NUM_SPLITS=num_splits,
    )  # fmt: skip
    if num_splits > 1:
        _combine_kernel[(num_seqs, num_heads)](
            out, part_o, part_lse, query_start_loc, *out.stride(),
            NUM_HEADS=num_heads, HEAD_SIZE=head_size, BLOCK_D=block_d,
            NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
        )  # fmt: skip
