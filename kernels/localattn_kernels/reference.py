"""Dense-mask torch reference of sink + sliding-window attention: the single source of truth for tests.

Query at absolute position ``i`` attends key ``j`` iff ``j <= i and (j < sinks or j > i - window)``.
Deliberately naive (fp32, one dense mask per sequence) so that it is obviously right, not fast.
"""

from __future__ import annotations

import torch

from localattn_kernels.checks import check_dtype, check_gqa, check_index, check_window_sinks


def local_mask(q_pos: torch.Tensor, k_len: int, *, window: int, sinks: int) -> torch.Tensor:
    """Boolean ``[len(q_pos), k_len]`` mask, True where the query may attend the key."""
    check_window_sinks(window, sinks)
    j = torch.arange(k_len, device=q_pos.device)[None, :]
    i = q_pos[:, None]
    return (j <= i) & ((j < sinks) | (j > i - window))


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    window: int,
    sinks: int,
    scale: float,
) -> torch.Tensor:
    """Variable-length local attention.

    ``q``: ``[total_q, num_heads, head_size]``; ``k``/``v``: ``[total_k, num_kv_heads, head_size]``; sequence ``b``
    owns rows ``cu_seqlens_*[b]:cu_seqlens_*[b+1]``; its queries are the last ``len_q`` positions of its
    ``len_k`` keys. Query head ``h`` uses KV head ``h // (num_heads // num_kv_heads)``. Returns ``q``'s dtype.
    """
    check_window_sinks(window, sinks)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k, v must be [tokens, heads, head_size]")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"head_size mismatch: q {q.shape[2]}, k {k.shape[2]}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, t)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"dtype mismatch: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    group = check_gqa(q.shape[1], k.shape[1])
    check_index("cu_seqlens_q", cu_seqlens_q, 1)
    check_index("cu_seqlens_k", cu_seqlens_k, 1)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must have the same length")
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    if cq[-1] != q.shape[0] or ck[-1] != k.shape[0]:
        raise ValueError("cu_seqlens must end at the number of query / key rows")

    out = torch.empty_like(q)
    for b in range(len(cq) - 1):
        lq, lk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        if lq > lk:
            raise ValueError(f"sequence {b}: {lq} queries but only {lk} keys")
        if lq == 0:
            continue
        qb = q[cq[b] : cq[b + 1]].float().transpose(0, 1)  # [H, lq, D]
        kb = k[ck[b] : ck[b + 1]].float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, lk, D]
        vb = v[ck[b] : ck[b + 1]].float().repeat_interleave(group, dim=1).transpose(0, 1)
        mask = local_mask(torch.arange(lk - lq, lk, device=q.device), lk, window=window, sinks=sinks)
        scores = (qb @ kb.transpose(1, 2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        out[cq[b] : cq[b + 1]] = (torch.softmax(scores, dim=-1) @ vb).transpose(0, 1).to(q.dtype)
    return out
