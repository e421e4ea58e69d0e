"""The KV-cache layout contract shared by vLLM 0.32, the runtime and these kernels.

Written down in one place because the runtime hands vLLM's own cache tensors to the kernels without copies:
if the two disagree on where key ``t`` of head ``h`` lives, attention is silently wrong.

CPU (``vllm/v1/attention/backends/cpu_attn.py``, what ``localattn_kernels.cpu`` reads)
    ``kv_cache``: ``[num_blocks, num_kv_heads, block_size, 2 * head_size]``, the model dtype (fp32/bf16/fp16),
    ``block_size`` a multiple of 32 (vLLM's CPU default 128). The backend views it as
    ``[num_blocks, num_kv_heads, 2 * block_size, head_size]`` and chunks dim 2: ``key_cache`` and ``value_cache``
    are the two halves, each a ``[num_blocks, num_kv_heads, block_size, head_size]`` view (see
    :func:`split_kv_cache`). Inside one (block, head) the ``block_size * head_size`` elements are laid out by the
    ISA vLLM picked (``layer.isa``), measured on vLLM 0.32 with its own ``cpu_attn_reshape_and_cache``:

    * ``"vec"`` / ``"vec16"`` (x86 without AMX, and head sizes not a multiple of 32): keys are stored
      transposed, ``K^T`` as ``[head_size, block_size]`` row-major; values plain ``[block_size, head_size]``.
    * ``"amx"`` (bf16 on AMX machines): tiled/VNNI-packed; this module derives the element permutation from
      vLLM's writer once per (dtype, block_size, head_size) and the kernels apply it to the gathered blocks.

    Slot ``s`` (from ``slot_mapping``) is token offset ``s % block_size`` of physical block ``s // block_size``;
    ``block_table[r, i]`` is the physical block of logical block ``i`` of request ``r``.

GPU (``vllm/v1/attention/backends/triton_attn.py``, what ``localattn_kernels.triton`` reads)
    The cache arrives as ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (logical order); the backend
    does ``kv_cache.transpose(1, 2).split(head_size, dim=-1)``, giving ``key_cache`` / ``value_cache`` views of
    shape ``[num_blocks, block_size, num_kv_heads, head_size]`` with arbitrary strides (see
    :func:`split_kv_cache_gpu`). The Triton kernels take those views and their strides as they are; keys are not
    transposed there. Any block size that is a power of two >= 16 works.
"""

from __future__ import annotations

import functools
import math

import torch

#: ISAs of vLLM's CPU backend whose layouts the CPU path understands.
CPU_ISAS = ("vec", "vec16", "amx")
#: Those whose in-block order is tiled for the ISA's loads (the kernels permute gathered blocks).
PACKED_ISAS = ("amx",)
#: dtypes the kernels accept for the query and the cache.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_BLOCK_SIZE_MULTIPLE = 32


def kv_cache_shape(num_blocks: int, num_kv_heads: int, block_size: int, head_size: int) -> tuple[int, ...]:
    """The CPU backend's ``get_kv_cache_shape`` (one tensor holding K and V)."""
    return (num_blocks, num_kv_heads, block_size, 2 * head_size)


def split_kv_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly what ``CPUAttentionBackendImpl.forward`` does: views, no copy."""
    if kv_cache.dim() != 4 or kv_cache.shape[-1] % 2:
        raise ValueError(
            f"kv_cache must be [num_blocks, num_kv_heads, block_size, 2*head_size], got {tuple(kv_cache.shape)}"
        )
    num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
    key_cache, value_cache = kv_cache.view(num_blocks, num_kv_heads, 2 * block_size, -1).chunk(2, dim=2)
    return key_cache, value_cache


def split_kv_cache_gpu(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly what vLLM's Triton backend does: ``[nb, bs, H, D]`` views, no copy."""
    if kv_cache.dim() != 4 or kv_cache.shape[-1] % 2:
        raise ValueError(
            f"kv_cache must be [num_blocks, num_kv_heads, block_size, 2*head_size], got {tuple(kv_cache.shape)}"
        )
    head_size = kv_cache.shape[-1] // 2
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


def num_sink_blocks(sinks: int, block_size: int) -> int:
    """Logical blocks that hold the ``sinks`` first tokens (they are never freed)."""
    if sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {sinks}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return math.ceil(sinks / block_size)


def window_start(first_query_pos: int, window: int) -> int:
    """First key position inside the window of the query at ``first_query_pos``."""
    return max(0, first_query_pos - window + 1)


def needed_blocks(seq_len: int, *, window: int, sinks: int, block_size: int, q_len: int = 1) -> list[int]:
    """Logical blocks read by the last ``q_len`` queries of a sequence of ``seq_len`` tokens.

    Query ``i`` reads key ``j`` iff ``j <= i and (j < sinks or j > i - window)``. With ``q_len=1`` this is the set
    a decode step needs; every other block (except ones still to be written) can be freed.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if seq_len < 1 or not 1 <= q_len <= seq_len:
        raise ValueError(f"need 1 <= q_len <= seq_len, got q_len={q_len}, seq_len={seq_len}")
    last = (seq_len - 1) // block_size
    sink = min(num_sink_blocks(sinks, block_size), last + 1)
    first_win = window_start(seq_len - q_len, window) // block_size
    return sorted(set(range(sink)) | set(range(first_win, last + 1)))


def key_block_view(key_cache: torch.Tensor, isa: str) -> torch.Tensor:
    """Re-view the CPU ``key_cache`` so that dims 2,3 are (head_size, block_size) for "vec"/"vec16"."""
    nb, nh, bs, d = key_cache.shape
    if isa in ("vec", "vec16"):
        return key_cache.as_strided((nb, nh, d, bs), (key_cache.stride(0), key_cache.stride(1), bs, 1))
    raise ValueError(f"no strided key view for isa {isa!r}")


@functools.lru_cache(maxsize=64)
def packed_permutation(
    isa: str, dtype: torch.dtype, block_size: int, head_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a packed ISA ("amx"): ``(k_perm, v_perm)`` such that ``raw.flatten()[perm]`` is plain ``[bs, d]``.

    Derived by letting vLLM's own writer store index-coded keys/values once; imports vLLM lazily.
    """
    from vllm import _custom_ops as ops

    kv = torch.zeros(kv_cache_shape(1, 1, block_size, head_size), dtype=dtype)
    key_cache, value_cache = split_kv_cache(kv)
    idx = torch.arange(block_size * head_size).view(block_size, 1, head_size)
    coded = idx.to(torch.float32) if dtype == torch.float32 else idx.to(torch.int16).view(dtype)
    ops.cpu_attn_reshape_and_cache(
        coded, coded.clone(), key_cache, value_cache, torch.arange(block_size), isa
    )
    raw = kv[0, 0].reshape(-1)
    codes = raw.long() if dtype == torch.float32 else raw.view(torch.int16).long()
    n = block_size * head_size
    # codes[p] = plain index stored at raw position p; invert to gather plain order.
    k_perm = torch.empty(n, dtype=torch.long)
    k_perm[codes[:n]] = torch.arange(n)
    v_perm = torch.empty(n, dtype=torch.long)
    v_perm[codes[n:]] = torch.arange(n)
    return k_perm, v_perm


def write_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slot_mapping: torch.Tensor,
    isa: str = "vec",
) -> None:
    """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` at ``slot_mapping`` in the CPU layout.

    A torch re-implementation of ``cpu_attn_reshape_and_cache`` for "vec"/"vec16" (tests and benchmarks that
    must not depend on vLLM); for "amx" it calls vLLM's writer.
    """
    if isa == "amx":
        from vllm import _custom_ops as ops

        ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, isa)
        return
    bs = key_cache.shape[2]
    blocks, offsets = slot_mapping // bs, slot_mapping % bs
    kt = key_block_view(key_cache, isa)  # [nb, H, D, bs]
    kt[blocks, :, :, offsets] = key.to(kt.dtype)
    value_cache[blocks, :, offsets, :] = value.to(value_cache.dtype)


def write_kv_gpu(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store K/V at ``slot_mapping`` in the GPU layout (``[nb, bs, H, D]`` views)."""
    bs = key_cache.shape[1]
    blocks, offsets = slot_mapping // bs, slot_mapping % bs
    key_cache[blocks, offsets] = key.to(key_cache.dtype)
    value_cache[blocks, offsets] = value.to(value_cache.dtype)
