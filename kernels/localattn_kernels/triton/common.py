"""Pieces shared by the Triton decode and prefill kernels: the online-softmax tile update."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Softmax runs in base 2: exp(x) = 2^(x * log2(e)), the scale folds the factor in.
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read when kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tile_sizes(dtype: torch.dtype) -> tuple[int, int, int]:
    """(decode keys per tile, prefill query rows per program, prefill keys per tile) for this dtype.

    fp16/bf16 dots run on tensor cores; fp32 dots in IEEE precision run on FMA units and hold far more in
    registers, so the 16-bit tiles would spill on sm_80/sm_90 (``python -m localattn_kernels.triton.compile_check``
    shows registers and spills per kernel; ``tests/kernels/test_kernels_triton_compile.py`` keeps them at zero).
    """
    return (16, 16, 16) if dtype == torch.float32 else (64, 64, 32)


def padded_head_size(head_size: int) -> int:
    """The head dimension of the kernels' tiles: a power of two (masked beyond ``head_size``) and at least 16,
    the smallest inner dimension ``tl.dot`` compiles for on NVIDIA GPUs (the interpreter accepts any)."""
    return max(16, triton.next_power_of_2(head_size))


def upcast_dots(dtype: torch.dtype) -> bool:
    """Whether the kernels must run their dots in fp32 (bf16 under the interpreter, see ``attend_tile``)."""
    return dtype == torch.bfloat16 and interpreting()


@triton.jit
def attend_tile(
    acc, m_i, l_i, q, j, allowed, load_ok, seq_idx, kvh,
    k_ptr, v_ptr, block_table_ptr, stride_bt,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    scale_log2e,
    PAGE: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_SIZE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One flash-attention step over keys at absolute positions ``j`` (``[BLOCK_N]``).

    Keys are found through the block table token by token (block ``j // PAGE``, slot ``j % PAGE``) and loaded
    only where ``load_ok`` (``[BLOCK_N]``); ``allowed`` (broadcastable to ``[BLOCK_M, BLOCK_N]``) is the
    per-query mask. ``UPCAST`` runs the dots in fp32: only for bf16 under ``TRITON_INTERPRET=1``, whose numpy
    ``tl.dot`` mis-reads bf16 operands. Dots ask for IEEE precision: fp32 operands then multiply in fp32 as
    the reference does (Triton's default on NVIDIA is TF32, ~1e-3 relative error); 16-bit operands still run on
    tensor cores (the setting only concerns fp32; ``compile_check`` shows the instructions). Softmax runs in
    base 2 (``scale_log2e`` folds ``log2(e)`` into the scale); ``m_i`` may be ``-inf`` for rows that have seen
    no key yet.
    """
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_SIZE
    blk = tl.load(block_table_ptr + seq_idx * stride_bt + j // PAGE, mask=load_ok, other=0).to(tl.int64)
    off = (j % PAGE).to(tl.int64)
    k = tl.load(
        k_ptr
        + blk[None, :] * stride_kb
        + off[None, :] * stride_kt
        + kvh * stride_kh
        + d[:, None] * stride_kd,
        mask=d_ok[:, None] & load_ok[None, :],
        other=0.0,
    )  # [BLOCK_D, BLOCK_N]
    if UPCAST:  # a constexpr branch, kept as a statement for the Triton frontend
        s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee") * scale_log2e
    else:
        s = tl.dot(q, k, input_precision="ieee") * scale_log2e
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_ptr
        + blk[:, None] * stride_vb
        + off[:, None] * stride_vt
        + kvh * stride_vh
        + d[None, :] * stride_vd,
        mask=load_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_N, BLOCK_D]
    if UPCAST:  # a constexpr branch, kept as a statement for the Triton frontend
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    acc = acc * alpha[:, None] + pv
    return acc, m_new, l_i
