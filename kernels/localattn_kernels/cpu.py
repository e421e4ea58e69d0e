"""Fast CPU sink + sliding-window attention straight over vLLM's paged CPU KV cache.

Why this shape: on CPU the cost of attention is the bytes of K/V read. Each query row only needs the sink
blocks and the blocks overlapping its window, so we gather exactly those through the block table (decode: one
gather for the whole batch of decode rows; prefill: per query tile, the S sink tokens and the window tokens
``[tile_start - W + 1, tile_end]``) and run small fp32 matmuls / SDPA on the gathered set. Cost is
``O(W + S)`` per query, independent of the context length. Decode and prefill rows go to the fused C kernels
of :mod:`localattn_kernels.cpu_native` when they are available (same math, each byte read once per task); the
torch code here is the fallback (AMX layout, fp16, block size 16, no compiler). The cache is read in place
(layout: see :mod:`localattn_kernels.layout`), never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from localattn_kernels import cpu_native
from localattn_kernels.checks import check_lengths, check_paged_args
from localattn_kernels.layout import CPU_ISAS, key_block_view, num_sink_blocks, packed_permutation

#: Query rows per torch prefill tile: bounds the gathered set to S + W + tile keys. Measured at 16k context
#: (bf16, W=512, S=4, 8/2/32 and 4/4/64 heads/KV heads/head size, 1 and 2 threads): 192 beat 128, 256 and 384
#: by 0-15 % (smaller tiles pay per-tile overhead, larger ones score more masked keys).
PREFILL_TILE = 192


def _gather_kt(key_cache: torch.Tensor, phys: torch.Tensor, isa: str) -> torch.Tensor:
    """Keys of physical blocks ``phys`` (1-D) as ``[P, H, D, bs]`` (one contiguous gather)."""
    nb, nh, bs, d = key_cache.shape
    if isa == "amx":
        raw = key_cache.as_strided((nb, nh, bs * d), (key_cache.stride(0), key_cache.stride(1), 1))
        k_perm, _ = packed_permutation(isa, key_cache.dtype, bs, d)
        plain = torch.index_select(raw, 0, phys)[..., k_perm].unflatten(-1, (bs, d))
        return plain.transpose(-1, -2)
    return torch.index_select(key_block_view(key_cache, isa), 0, phys)


def _gather_v(value_cache: torch.Tensor, phys: torch.Tensor, isa: str) -> torch.Tensor:
    """Values of physical blocks ``phys`` (1-D) as ``[P, H, bs, D]``."""
    nb, nh, bs, d = value_cache.shape
    if isa == "amx":
        raw = value_cache.as_strided((nb, nh, bs * d), (value_cache.stride(0), value_cache.stride(1), 1))
        _, v_perm = packed_permutation(isa, value_cache.dtype, bs, d)
        return torch.index_select(raw, 0, phys)[..., v_perm].unflatten(-1, (bs, d))
    return torch.index_select(value_cache, 0, phys)


def _block_plan(
    last_pos: torch.Tensor, first_pos: torch.Tensor, *, window: int, sinks: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: logical blocks to read ``[R, n]`` and whether each slot is real (padding otherwise).

    Row ``r`` needs sink blocks ``[0, ceil(S/bs))`` and the blocks from the window start of its first query
    ``first_pos`` up to its last query ``last_pos``; sink blocks are not read twice.
    """
    ns = num_sink_blocks(sinks, block_size)
    last_blk = last_pos // block_size
    n_sink = torch.clamp(last_blk + 1, max=ns)
    first_win = torch.clamp(torch.clamp(first_pos - window + 1, min=0) // block_size, min=ns)
    n_win = torch.clamp(last_blk - first_win + 1, min=0)
    count = n_sink + n_win
    n = int(count.max())
    j = torch.arange(n)[None, :]
    logical = torch.where(j < n_sink[:, None], j, first_win[:, None] + j - n_sink[:, None])
    valid = j < count[:, None]
    return torch.where(valid, logical, 0), valid


def _decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    window: int,
    sinks: int,
    scale: float,
    isa: str,
) -> torch.Tensor:
    """One query per row (rows = requests): ``query`` ``[R, Hq, D]`` -> ``[R, Hq, D]``."""
    rows, hq, d = query.shape
    bs, hkv = key_cache.shape[2], key_cache.shape[1]
    last = seq_lens - 1
    logical, valid = _block_plan(last, last, window=window, sinks=sinks, block_size=bs)
    phys = torch.gather(block_table, 1, logical.to(block_table.dtype)).long()
    n = logical.shape[1]
    pos = (logical[:, :, None] * bs + torch.arange(bs)).view(rows, n * bs)
    lim = last[:, None]
    allowed = valid.repeat_interleave(bs, dim=1) & (pos <= lim) & ((pos < sinks) | (pos > lim - window))
    flat = phys.view(-1)
    # One gather each, then one fused permute + upcast copy into fp32 buffers laid out for two bmm calls.
    kt = torch.empty(rows, hkv, d, n, bs, dtype=torch.float32)
    kt.copy_(_gather_kt(key_cache, flat, isa).view(rows, n, hkv, d, bs).permute(0, 2, 3, 1, 4))
    v = torch.empty(rows, hkv, n, bs, d, dtype=torch.float32)
    v.copy_(_gather_v(value_cache, flat, isa).view(rows, n, hkv, bs, d).transpose(1, 2))
    kt, v = kt.view(rows, hkv, d, n * bs), v.view(rows, hkv, n * bs, d)
    q = query.view(rows, hkv, hq // hkv, d).float()
    scores = torch.matmul(q, kt).mul_(scale)  # [R, H, G, N]
    scores.masked_fill_(~allowed[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v).view(rows, hq, d)


def _token_range(
    cache: torch.Tensor,
    table_row: torch.Tensor,
    k0: int,
    k1: int,
    gather: Callable[..., torch.Tensor],
    isa: str,
) -> torch.Tensor:
    """Keys (``gather=_gather_kt``) or values of token positions ``[k0, k1)`` of one request as ``[H, n, D]``."""
    bs = cache.shape[2]
    b0 = k0 // bs
    blocks = gather(cache, table_row[b0 : (k1 - 1) // bs + 1].long(), isa)  # [P, H, D, bs] or [P, H, bs, D]
    if gather is _gather_kt:
        blocks = blocks.transpose(-1, -2)
    flat = blocks.transpose(0, 1).flatten(1, 2)  # [H, P*bs, D]
    return flat[:, k0 - b0 * bs : k1 - b0 * bs]


def _prefill_tile(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    table_row: torch.Tensor,
    first: int,
    *,
    window: int,
    sinks: int,
    scale: float,
    isa: str,
) -> torch.Tensor:
    """Queries at absolute positions ``first .. first+len-1`` of one request: ``[t, Hq, D]`` -> same.

    Reads the sink *tokens* ``[0, min(S, last+1))`` and the window ``[max(first - W + 1, S), last]`` (or one
    range ``[0, last]`` when they touch); SDPA's ``enable_gqa`` shares each KV head with its query heads.
    """
    t = query.shape[0]
    last = first + t - 1
    lo = max(first - window + 1, 0)
    parts = [(0, last + 1)] if lo <= sinks else [(0, sinks), (lo, last + 1)]  # one range when they touch
    parts = [(a, b) for a, b in parts if a < b]  # S = 0: no sink range
    k = torch.cat([_token_range(key_cache, table_row, a, b, _gather_kt, isa) for a, b in parts], dim=1)
    v = torch.cat([_token_range(value_cache, table_row, a, b, _gather_v, isa) for a, b in parts], dim=1)
    pos = torch.cat([torch.arange(a, b) for a, b in parts])
    qpos = torch.arange(first, last + 1)[:, None]
    allowed = (pos <= qpos) & ((pos < sinks) | (pos > qpos - window))  # [t, N]
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1)[None], k[None], v[None], attn_mask=allowed, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1)


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
    isa: str = "vec",
) -> torch.Tensor:
    """Sink + window attention for a mixed batch of prefill / chunked-prefill / decode requests.

    ``query``: ``[num_tokens, Hq, D]``; ``key_cache``/``value_cache``: the CPU backend's views
    ``[num_blocks, Hkv, block_size, D]`` (from :func:`localattn_kernels.layout.split_kv_cache`), laid out for
    ``isa`` (vLLM's ``layer.isa``); request ``r`` owns query rows ``query_start_loc[r]:query_start_loc[r+1]``,
    which are the last positions of its ``seq_lens[r]`` tokens (already written to the cache).
    Writes into ``out`` (``[num_tokens, Hq, D]`` or ``[num_tokens, Hq*D]``) when given; rows past
    ``query_start_loc[-1]`` are left untouched. Returns ``[num_tokens, Hq, D]``.
    """
    check_paged_args(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, window, sinks,
        head_dim_axis=3, heads_axis=1, block_axis=2,
    )  # fmt: skip
    if isa not in CPU_ISAS:
        raise ValueError(f"isa must be one of {CPU_ISAS}, got {isa!r}")
    if query.device.type != "cpu" or key_cache.device.type != "cpu":
        raise ValueError("localattn_kernels.cpu needs CPU tensors (use localattn_kernels.triton on GPU)")
    num_tokens, hq, d = query.shape
    if out is None:
        out = torch.empty_like(query)
    if out.shape[0] != num_tokens or out.numel() != query.numel() or out.dtype != query.dtype:
        raise ValueError(
            f"out must match query ({tuple(query.shape)}, {query.dtype}), got {tuple(out.shape)}, {out.dtype}"
        )
    out3 = out.view(num_tokens, hq, d)

    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[r + 1] - starts[r] for r in range(len(lens))]
    bs = key_cache.shape[2]
    check_lengths(q_lens, lens, block_table.shape[1], bs, num_tokens)

    decode_rows = [r for r, ql in enumerate(q_lens) if ql == 1]
    if decode_rows:
        all_decode = len(decode_rows) == len(lens)
        rows_t = None if all_decode else torch.tensor(decode_rows)
        table = block_table if rows_t is None else block_table[rows_t]
        sl = seq_lens if rows_t is None else seq_lens[rows_t]
        # The C kernel reads the first len(sl) entries only, so the whole query_start_loc can be passed.
        q_rows = query_start_loc if rows_t is None else query_start_loc[rows_t]
        if cpu_native.supports(query, key_cache, value_cache, isa):
            cpu_native.decode(
                query,
                key_cache,
                value_cache,
                out3,
                table,
                sl,
                q_rows,
                window=window,
                sinks=sinks,
                scale=scale,
            )
        else:
            q_idx = q_rows[: sl.shape[0]].long()
            table = table[: sl.shape[0]]
            res = _decode(
                query[q_idx],
                key_cache,
                value_cache,
                table,
                sl.long(),
                window=window,
                sinks=sinks,
                scale=scale,
                isa=isa,
            )
            out3[q_idx] = res.to(out.dtype)
    prefill_rows = [r for r, ql in enumerate(q_lens) if ql > 1]
    if prefill_rows and cpu_native.supports(query, key_cache, value_cache, isa):
        rows_t = torch.tensor(prefill_rows)
        cpu_native.prefill(
            query, key_cache, value_cache, out3, block_table[rows_t], seq_lens[rows_t], query_start_loc[rows_t],
            torch.tensor([q_lens[r] for r in prefill_rows], dtype=torch.int32),
            window=window, sinks=sinks, scale=scale,
        )  # fmt: skip
        return out3
    for r in prefill_rows:
        ql = q_lens[r]
        first_pos = lens[r] - ql
        for t0 in range(0, ql, PREFILL_TILE):
            t1 = min(ql, t0 + PREFILL_TILE)
            rows = slice(starts[r] + t0, starts[r] + t1)
            out3[rows] = _prefill_tile(
                query[rows], key_cache, value_cache, block_table[r], first_pos + t0,
                window=window, sinks=sinks, scale=scale, isa=isa,
            )  # fmt: skip
    return out3
