"""Random paged-attention cases (caches in vLLM's CPU or GPU layout + the reference answer).

Shared by tests, benchmarks and ``benchmarks/device_check.sh`` so they all build caches the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from localattn_kernels import layout
from localattn_kernels.reference import local_attention

#: (head_size, GQA group, block size, dtype) for the Triton kernels' tests, compile check and device check: every
#: value of each axis (head sizes 64/128, groups 1/4/8, block sizes 16/32/128, fp16/bf16) appears, in varied
#: combinations (the full product is too slow under the interpreter).
TRITON_COVER: list[tuple[int, int, int, torch.dtype]] = [
    (64, 1, 16, torch.float16),
    (64, 4, 32, torch.bfloat16),
    (64, 8, 128, torch.float16),
    (128, 1, 128, torch.bfloat16),
    (128, 4, 16, torch.float16),
    (128, 8, 32, torch.bfloat16),
]
#: The same plus fp32, which the Triton kernels run with tiles of their own (IEEE dots on FMA units).
TRITON_COVER_WITH_FP32 = [*TRITON_COVER, (128, 4, 16, torch.float32)]


@dataclass
class PagedCase:
    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    keys: torch.Tensor  # [total_k, Hkv, D], dense, for the reference
    values: torch.Tensor
    cu_seqlens_k: torch.Tensor
    kv_cache: torch.Tensor  # the one tensor vLLM allocates per layer; key_cache and value_cache are views of it

    def reference(self, *, window: int, sinks: int, scale: float) -> torch.Tensor:
        return local_attention(
            self.query, self.keys, self.values, cu_seqlens_q=self.query_start_loc,
            cu_seqlens_k=self.cu_seqlens_k, window=window, sinks=sinks, scale=scale,
        )  # fmt: skip


def make_case(
    requests: list[tuple[int, int]],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    gpu_layout: bool = False,
    isa: str = "vec",
    device: str | torch.device = "cpu",
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedCase:
    """``requests``: ``(q_len, seq_len)`` pairs. Blocks are shuffled so block tables are not the identity."""
    gen = torch.Generator().manual_seed(seed)
    per = [math.ceil(sl / block_size) for _, sl in requests]
    num_blocks = sum(per) + spare_blocks
    kv = torch.randn(layout.kv_cache_shape(num_blocks, num_kv_heads, block_size, head_size), generator=gen)
    kv = kv.to(dtype=dtype, device=device)  # garbage in unused slots, as in a real cache
    if gpu_layout:
        key_cache, value_cache = layout.split_kv_cache_gpu(kv)
    else:
        key_cache, value_cache = layout.split_kv_cache(kv)
    perm = torch.randperm(num_blocks, generator=gen)
    block_table = torch.zeros(len(requests), max(per), dtype=torch.int32)
    qs, ks, vs, used = [], [], [], 0
    for r, (q_len, seq_len) in enumerate(requests):
        blocks = perm[used : used + per[r]]
        used += per[r]
        block_table[r, : per[r]] = blocks.to(torch.int32)
        k = torch.randn(seq_len, num_kv_heads, head_size, generator=gen).to(dtype)
        v = torch.randn(seq_len, num_kv_heads, head_size, generator=gen).to(dtype)
        slots = blocks[torch.arange(seq_len) // block_size] * block_size + torch.arange(seq_len) % block_size
        if gpu_layout:
            layout.write_kv_gpu(key_cache, value_cache, k.to(device), v.to(device), slots.to(device))
        else:
            layout.write_kv(key_cache, value_cache, k, v, slots, isa)
        ks.append(k)
        vs.append(v)
        qs.append(torch.randn(q_len, num_heads, head_size, generator=gen).to(dtype))
    q_lens = torch.tensor([0] + [q for q, _ in requests])
    k_lens = torch.tensor([0] + [s for _, s in requests])
    return PagedCase(
        query=torch.cat(qs).to(device),
        key_cache=key_cache,
        value_cache=value_cache,
        block_table=block_table.to(device),
        seq_lens=k_lens[1:].to(torch.int32).to(device),
        query_start_loc=q_lens.cumsum(0).to(torch.int32).to(device),
        keys=torch.cat(ks).to(device),
        values=torch.cat(vs).to(device),
        cu_seqlens_k=k_lens.cumsum(0).to(torch.int32).to(device),
        kv_cache=kv,
    )
