"""Fast CPU sink + sliding-window attention straight over vLLM's paged CPU KV cache.

Why this shape: on CPU the cost of attention is the bytes of K/V read. Each query row only needs the sink
blocks and the blocks overlapping its window, so we gather exactly those through the block table (decode: one
gather for the whole batch of decode rows; prefill: per query tile, the S sink tokens and the window tokens
``[tile_start - W + 1, tile_end]``) and run small fp32 matmuls / SDPA on the gathered set. Cost is
``O(W + S)`` per query, independent of the context length. Decode and prefill rows go to the fused C kernels
of :mod:`localattn_kernels.cpu_native` when they are available (same math, each byte read once per task); the
torch code here is the fallback (fp16, block size 16, no compiler). The cache is read in place (layout: see
:mod:`localattn_kernels.layout`), never copied whole. vLLM's AMX layout (bf16 on Intel CPUs with AMX) is
tiled for AMX tile loads, which the C kernels do not read: each step, each local layer first copies just the
blocks the step needs (sinks + windows, ~W + S + chunk tokens per request) into "vec" order
(:func:`repack_blocks`), then runs the C kernels on that copy, which costs O(W + S) per request like the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from localattn_kernels import cpu_native
from localattn_kernels.checks import check_batch, check_layer_tensors, check_lengths
from localattn_kernels.layout import (
    CPU_ISAS,
    PACKED_ISAS,
    key_block_view,
    num_sink_blocks,
    packed_permutation,
)

#: Query rows per torch prefill tile: bounds the gathered set to S + W + tile keys. Measured at 16k context
#: (bf16, W=512, S=4, 8/2/32 and 4/4/64 heads/KV heads/head size, 1 and 2 threads): 192 beat 128, 256 and 384
#: by 0-15 % (smaller tiles pay per-tile overhead, larger ones score more masked keys).
PREFILL_TILE = 192


def _gather_kt(key_cache: torch.Tensor, phys: torch.Tensor, isa: str) -> torch.Tensor:
    """Keys of physical blocks ``phys`` (1-D) as ``[P, H, D, bs]`` (one contiguous gather)."""
    nb, nh, bs, d = key_cache.shape
    if isa in PACKED_ISAS:
        raw = key_cache.as_strided((nb, nh, bs * d), (key_cache.stride(0), key_cache.stride(1), 1))
        k_perm, _ = packed_permutation(isa, key_cache.dtype, bs, d)
        plain = torch.index_select(raw, 0, phys)[..., k_perm].unflatten(-1, (bs, d))
        return plain.transpose(-1, -2)
    return torch.index_select(key_block_view(key_cache, isa), 0, phys)


def _gather_v(value_cache: torch.Tensor, phys: torch.Tensor, isa: str) -> torch.Tensor:
    """Values of physical blocks ``phys`` (1-D) as ``[P, H, bs, D]``."""
    nb, nh, bs, d = value_cache.shape
    if isa in PACKED_ISAS:
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


@dataclass(frozen=True)
class StepPlan:
    """The layer-independent part of :func:`paged_local_attention` for one batch, computed once per step.

    Every local layer of a step attends over the same batch (block table, lengths); only Q/K/V differ. The host
    reads (``.tolist()``), the length checks, the decode / prefill row split and the int32 copies the C kernels
    read are the same for all of them, so vLLM's metadata builder makes one plan per step
    (:func:`plan_step`) and each layer calls :func:`planned_local_attention` with it.
    """

    num_tokens: int
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    starts: list[int]
    lens: list[int]
    q_lens: list[int]
    decode_rows: list[int]
    prefill_rows: list[int]
    # What the C kernels read (int32, contiguous): decode (table, seq_lens, query rows), prefill (table,
    # seq_lens, query starts, query lengths); None when the step has no such rows.
    native_decode: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    native_prefill: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None
    # For a packed cache layout (`plan_step(..., repack=(window, sinks))`): the physical blocks the step reads,
    # in the order they are copied, and the (window, sinks) they were chosen for; the native tables above then
    # index that copy instead of the cache.
    repack_blocks: torch.Tensor | None = None
    repack_for: tuple[int, int] | None = None


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()


def _repacked_table(block_table: torch.Tensor, lens: list[int], q_lens: list[int], *, window: int, sinks: int,
                    block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The physical blocks the batch's queries read (request by request) and a block table of the same shape
    that maps each of those logical blocks to its place in that list (every other entry 0, never read)."""
    seq = torch.tensor(lens)
    logical, valid = _block_plan(seq - 1, seq - torch.tensor(q_lens), window=window, sinks=sinks,
                                 block_size=block_size)
    rows = torch.arange(len(lens))[:, None].expand_as(logical)[valid]
    phys = block_table[rows, logical[valid]].long()
    table = torch.zeros(block_table.shape, dtype=torch.int32)
    table[rows, logical[valid]] = torch.arange(phys.numel(), dtype=torch.int32)
    return phys, table


def plan_step(
    block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor, *, block_size: int,
    num_tokens: int, repack: tuple[int, int] | None = None,
) -> StepPlan:
    """Check and split one step's batch (see :class:`StepPlan`); raises ``ValueError`` like the kernels.
    ``repack=(window, sinks)``: the cache has a packed layout ("amx"), so the native kernels will read a copy
    of the blocks this batch needs (:func:`repack_blocks`), which the plan lists."""
    check_batch(block_table, seq_lens, query_start_loc)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[r + 1] - starts[r] for r in range(len(lens))]
    check_lengths(q_lens, lens, block_table.shape[1], block_size, num_tokens)
    decode_rows = [r for r, ql in enumerate(q_lens) if ql == 1]
    prefill_rows = [r for r, ql in enumerate(q_lens) if ql > 1]
    phys = None
    tables = block_table
    if repack is not None and lens:
        phys, tables = _repacked_table(block_table, lens, q_lens, window=repack[0], sinks=repack[1],
                                       block_size=block_size)
    native_decode = native_prefill = None
    if decode_rows:
        if len(decode_rows) == len(lens):
            native_decode = (_i32(tables), _i32(seq_lens), _i32(query_start_loc[: len(lens)]))
        else:
            rows = torch.tensor(decode_rows)
            native_decode = (_i32(tables[rows]), _i32(seq_lens[rows]), _i32(query_start_loc[rows]))
    if prefill_rows:
        rows = torch.tensor(prefill_rows)
        native_prefill = (_i32(tables[rows]), _i32(seq_lens[rows]), _i32(query_start_loc[rows]),
                          torch.tensor([q_lens[r] for r in prefill_rows], dtype=torch.int32))
    return StepPlan(num_tokens, block_table, seq_lens, query_start_loc, starts, lens, q_lens, decode_rows,
                    prefill_rows, native_decode, native_prefill, phys, repack)


def repack_blocks(key_cache: torch.Tensor, blocks: torch.Tensor, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``blocks`` of a packed-layout cache copied into new key and value caches ``[P, H, bs, D]`` in
    "vec" order (each (block, head) K^T ``[D, bs]``, V ``[bs, D]``; ``key_cache`` is the first half of vLLM's kv
    tensor, as :func:`~localattn_kernels.layout.split_kv_cache` returns it). One strided gather each (~3 GB/s
    on one core): vLLM 0.32's AMX tiles are plain reshapes (:func:`_amx_tile_views`, checked against its writer
    once per shape); any other packing goes through the element permutation, ~10x slower."""
    nb, nh, bs, d = key_cache.shape
    n = bs * d
    raw = key_cache.as_strided((nb, nh, 2 * n), (key_cache.stride(0), key_cache.stride(1), 1))
    if _amx_tiles_match(isa, key_cache.dtype, bs, d):
        k_view, v_view = _amx_tile_views(raw, bs, d)
        key = torch.empty((blocks.numel(), *k_view.shape[1:]), dtype=key_cache.dtype)
        value = torch.empty((blocks.numel(), *v_view.shape[1:]), dtype=key_cache.dtype)
        torch.index_select(k_view, 0, blocks, out=key)  # into contiguous vec order (a plain index keeps strides)
        torch.index_select(v_view, 0, blocks, out=value)
        return key.view(-1, nh, bs, d), value.view(-1, nh, bs, d)
    k_perm, v_perm = packed_permutation(isa, key_cache.dtype, bs, d)
    picked = torch.index_select(raw, 0, blocks)
    k_t = k_perm.view(bs, d).t().reshape(-1)  # vec position d * bs + t <- plain position t * D + d
    key = torch.index_select(picked[..., :n], 2, k_t).view(-1, nh, bs, d)
    return key, torch.index_select(picked[..., n:], 2, v_perm).view(-1, nh, bs, d)


def _amx_tile_views(raw: torch.Tensor, bs: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``raw`` ``[nb, H, 2 * bs * D]`` (AMX K then V per block and head) viewed in vec order without a copy.
    Keys: tiles of 16 tokens x 32 dims, dims in VNNI pairs, ``[bs/16, D/32, 16 pairs, 16 tokens, 2]`` ->
    ``[D, bs]``; values: 16-dim column strips of token pairs, ``[D/16, bs/2, 16, 2]`` -> ``[bs, D]``."""
    nb, nh, n = raw.shape[0], raw.shape[1], bs * d
    keys = raw[..., :n].view(nb, nh, bs // 16, d // 32, 16, 16, 2)
    values = raw[..., n:].view(nb, nh, d // 16, bs // 2, 16, 2)
    return keys.permute(0, 1, 3, 4, 6, 2, 5), values.permute(0, 1, 3, 5, 2, 4)


@functools.lru_cache(maxsize=16)
def _amx_tiles_match(isa: str, dtype: torch.dtype, block_size: int, head_size: int) -> bool:
    """Whether vLLM's writer (:func:`packed_permutation`) stores ``isa`` blocks exactly as
    :func:`_amx_tile_views` reads them (so a vLLM upgrade that changes the tiling falls back, never misreads)."""
    if isa != "amx" or block_size % 16 or head_size % 32:
        return False
    k_perm, v_perm = packed_permutation(isa, dtype, block_size, head_size)
    n = block_size * head_size
    codes = torch.arange(2 * n).view(1, 1, 2 * n)  # raw position codes
    k_view, v_view = _amx_tile_views(codes, block_size, head_size)
    k_plain = k_view.reshape(head_size, block_size).t().reshape(-1)  # plain (t, d) -> raw position
    v_plain = v_view.reshape(-1) - n
    return torch.equal(k_plain, k_perm) and torch.equal(v_plain, v_perm)


def check_layer_args(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, *, window: int, sinks: int, isa: str
) -> None:
    """The per-layer checks of :func:`paged_local_attention` (shapes, dtypes, heads, window, ISA, device): a
    caller that runs the same layer every step makes them once."""
    check_layer_tensors(query, key_cache, value_cache, window, sinks, head_dim_axis=3, heads_axis=1, block_axis=2)
    if isa not in CPU_ISAS:
        raise ValueError(f"isa must be one of {CPU_ISAS}, got {isa!r}")
    if query.device.type != "cpu" or key_cache.device.type != "cpu":
        raise ValueError("localattn_kernels.cpu needs CPU tensors (use localattn_kernels.triton on GPU)")


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
    One call = :func:`check_layer_args` + :func:`plan_step` + :func:`planned_local_attention`.
    """
    check_layer_args(query, key_cache, value_cache, window=window, sinks=sinks, isa=isa)
    plan = plan_step(block_table, seq_lens, query_start_loc, block_size=key_cache.shape[2],
                     num_tokens=query.shape[0], repack=(window, sinks) if isa in PACKED_ISAS else None)
    return planned_local_attention(query, key_cache, value_cache, plan, window=window, sinks=sinks, scale=scale,
                                   out=out, isa=isa, native=native_supports(query, key_cache, value_cache, isa))


def native_supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, isa: str) -> bool:
    """Whether the C kernels take this layer: a packed layout counts as the "vec" copy they will read."""
    return cpu_native.supports(query, key_cache, value_cache, "vec" if isa in PACKED_ISAS else isa)


def planned_local_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    plan: StepPlan,
    *,
    window: int,
    sinks: int,
    scale: float,
    out: torch.Tensor | None = None,
    isa: str = "vec",
    native: bool,
) -> torch.Tensor:
    """:func:`paged_local_attention` for a planned step, without its per-call checks: the caller has run
    :func:`check_layer_args` for this layer once and passes ``native = cpu_native.supports(...)`` (both depend
    on the layer's shapes and dtypes only, not on the step)."""
    num_tokens, hq, d = query.shape
    if num_tokens != plan.num_tokens:
        raise ValueError(f"query has {num_tokens} rows, the step's plan {plan.num_tokens}")
    if out is None:
        out = torch.empty_like(query)
    if out.shape[0] != num_tokens or out.numel() != query.numel() or out.dtype != query.dtype:
        raise ValueError(
            f"out must match query ({tuple(query.shape)}, {query.dtype}), got {tuple(out.shape)}, {out.dtype}"
        )
    out3 = out.view(num_tokens, hq, d)
    if native:
        if isa in PACKED_ISAS:
            if plan.repack_for != (window, sinks):
                raise ValueError(f"a packed ({isa}) cache needs a plan made with repack=({window}, {sinks}), "
                                 f"got repack={plan.repack_for}")
            if plan.repack_blocks is None:  # an empty batch
                return out3
            key_cache, value_cache = repack_blocks(key_cache, plan.repack_blocks, isa)
        if plan.native_decode is not None:
            table, sl, q_rows = plan.native_decode
            cpu_native.decode(query, key_cache, value_cache, out3, table, sl, q_rows,
                              window=window, sinks=sinks, scale=scale)
        if plan.native_prefill is not None:
            table, sl, q_starts, q_lens = plan.native_prefill
            cpu_native.prefill(query, key_cache, value_cache, out3, table, sl, q_starts, q_lens,
                               window=window, sinks=sinks, scale=scale)
        return out3
    block_table, seq_lens, query_start_loc = plan.block_table, plan.seq_lens, plan.query_start_loc
    if plan.decode_rows:
        all_decode = len(plan.decode_rows) == len(plan.lens)
        rows_t = None if all_decode else torch.tensor(plan.decode_rows)
        table = block_table if rows_t is None else block_table[rows_t]
        sl = seq_lens if rows_t is None else seq_lens[rows_t]
        q_rows = query_start_loc if rows_t is None else query_start_loc[rows_t]
        q_idx = q_rows[: sl.shape[0]].long()
        res = _decode(query[q_idx], key_cache, value_cache, table[: sl.shape[0]], sl.long(),
                      window=window, sinks=sinks, scale=scale, isa=isa)
        out3[q_idx] = res.to(out.dtype)
    for r in plan.prefill_rows:
        ql = plan.q_lens[r]
        first_pos = plan.lens[r] - ql
        for t0 in range(0, ql, PREFILL_TILE):
            t1 = min(ql, t0 + PREFILL_TILE)
            rows = slice(plan.starts[r] + t0, plan.starts[r] + t1)
            out3[rows] = _prefill_tile(
                query[rows], key_cache, value_cache, block_table[r], first_pos + t0,
                window=window, sinks=sinks, scale=scale, isa=isa,
            )  # fmt: skip
    return out3
