"""Other attention kernels on the same problem as ours, for the GPU check's side-by-side timings.

A :class:`Problem` is a paged cache (vLLM's GPU layout) plus queries; each entry of :data:`BASELINES` builds a
callable for it under the rule it computes (full causal, our sinks + window, or a window without sinks).
torch's FlashAttention-2 (SDPA) and FlexAttention need nothing but torch, so they run on the GPU machine this
project borrows (torch + Triton, no vLLM); vLLM's kernels join in wherever vLLM is importable.
:func:`try_baselines` keeps only the baselines whose output agrees with the expected one, so a wrong mask can
never flatter our kernel.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: A baseline agrees with the reference (or with our kernel) when, for every token and head, the largest error
#: is within this fraction of that output row's largest value. Measured on CPU: right masks 0.5-0.8% (bf16
#: output rounding); a window or sink count off by one 5-130%, at 300 keys and at 16k.
BASELINE_RTOL = 0.02


@dataclass
class Problem:
    """``batch`` sequences of ``context`` tokens in a paged cache (GPU layout, shuffled blocks), each with its last
    ``q_len`` positions as queries. Dense copies for torch's kernels are gathered on first use, untimed."""

    query: torch.Tensor  # [batch * q_len, Hq, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    context: int
    q_len: int
    window: int
    sinks: int
    compile: bool = True  # FlexAttention compiled on the GPU; the small reference checks run it eagerly (same mask)
    _dense: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def scale(self) -> float:
        return float(self.query.shape[-1] ** -0.5)

    def rule(self, rule: str) -> tuple[int, int]:
        """(window, sinks) of a baseline rule: "full" causal, "local" (ours) or "window" (no sinks, vLLM's SWA)."""
        return {"full": (self.context + 1, 0), "local": (self.window, self.sinks), "window": (self.window, 0)}[rule]

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q [B, Hq, q_len, D]`` and ``k, v [B, Hkv, context, D]``, contiguous."""
        if self._dense is None:
            batch, table = self.seq_lens.shape[0], self.block_table.long()
            q = self.query.view(batch, self.q_len, *self.query.shape[1:]).transpose(1, 2).contiguous()
            k, v = (c[table].flatten(1, 2)[:, : self.context].transpose(1, 2).contiguous()
                    for c in (self.key_cache, self.value_cache))  # fmt: skip
            self._dense = (q, k, v)
        return self._dense

    def rows(self, out: torch.Tensor) -> torch.Tensor:
        """An output as ``[tokens, Hq, D]`` (torch's kernels return ``[B, Hq, q_len, D]``)."""
        return out.transpose(1, 2).flatten(0, 1) if out.dim() == 4 else out

    def reference(self, rule: str) -> torch.Tensor:
        from localattn_kernels.reference import local_attention

        _, k, v = self.dense()
        window, sinks = self.rule(rule)
        n, ctx = self.seq_lens.shape[0], self.context
        cu_k = torch.arange(0, (n + 1) * ctx, ctx, dtype=torch.int32, device=k.device)
        return local_attention(self.query, k.transpose(1, 2).flatten(0, 1), v.transpose(1, 2).flatten(0, 1),
                               cu_seqlens_q=self.query_start_loc, cu_seqlens_k=cu_k, window=window, sinks=sinks,
                               scale=self.scale)  # fmt: skip


def paged_problem(batch: int, context: int, *, hq: int, hkv: int, d: int, bs: int, q_len: int, window: int, sinks: int,
           device: str, compile: bool = True) -> Problem:  # fmt: skip
    from localattn_kernels import layout

    per = -(-context // bs)
    kv = torch.randn(layout.kv_cache_shape(batch * per, hkv, bs, d), dtype=torch.bfloat16, device=device)
    key_cache, value_cache = layout.split_kv_cache_gpu(kv)
    return Problem(
        query=torch.randn(batch * q_len, hq, d, dtype=torch.bfloat16, device=device),
        key_cache=key_cache, value_cache=value_cache,
        block_table=torch.randperm(batch * per, device=device).view(batch, per).to(torch.int32),
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device=device),
        query_start_loc=torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=device),
        context=context, q_len=q_len, window=window, sinks=sinks, compile=compile,
    )  # fmt: skip


def ours(lt: Any, p: Problem, rule: str) -> Callable[[], Any]:
    """Our kernel (``lt`` = ``localattn_kernels.triton``) on the problem under a rule."""
    window, sinks = p.rule(rule)
    return lambda: lt.paged_local_attention(
        p.query, p.key_cache, p.value_cache, block_table=p.block_table, seq_lens=p.seq_lens,
        query_start_loc=p.query_start_loc, window=window, sinks=sinks, scale=p.scale, max_query_len=p.q_len,
    )  # fmt: skip


def _sdpa_flash(p: Problem, rule: str) -> Callable[[], Any]:
    """torch SDPA's FlashAttention-2 backend, full causal; callers hold ``sdpa_kernel(FLASH_ATTENTION)``."""
    if rule != "full" or p.q_len not in (1, p.context):
        raise ValueError("SDPA's causal mask is top-left aligned: full attention with q_len 1 or the context only")
    if torch.backends.cuda.math_sdp_enabled():
        raise RuntimeError("not restricted to the flash backend")
    q, k, v = p.dense()
    sdpa, causal = torch.nn.functional.scaled_dot_product_attention, p.q_len > 1
    try:
        sdpa(q, k, v, is_causal=causal, scale=p.scale, enable_gqa=True)
    except (RuntimeError, TypeError):  # no GQA in this torch's flash path: expand K/V once, outside the timing
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return lambda: sdpa(q, k, v, is_causal=causal, scale=p.scale)
    return lambda: sdpa(q, k, v, is_causal=causal, scale=p.scale, enable_gqa=True)


def _mask_mod(rule: str, offset: int, window: int, sinks: int) -> Callable[..., Any]:
    """Our rule (reference.py) for FlexAttention, whose query index ``q`` is position ``q + offset``."""

    def mask(b: Any, h: Any, q: Any, kv: Any) -> Any:
        causal = kv <= q + offset
        return causal if rule == "full" else causal & ((kv < sinks) | (kv > q + offset - window))

    return mask


@functools.lru_cache(maxsize=8)
def _block_mask(rule: str, q_len: int, context: int, window: int, sinks: int, device: str) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_mask_mod(rule, context - q_len, window, sinks), None, None, q_len, context, device)


@functools.cache
def _flex_attention(compiled: bool) -> Callable[..., Any]:
    """FlexAttention, compiled once (each shape and mask is one more graph: raise dynamo's recompile limit)."""
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    return torch.compile(flex_attention, dynamic=False)


def _flex(p: Problem, rule: str) -> Callable[[], Any]:
    """torch's FlexAttention with a block mask for the rule: the standard torch sliding-window kernel."""
    q, k, v = p.dense()
    window, sinks = p.rule(rule)
    mask = _block_mask(rule, p.q_len, p.context, window, sinks, str(q.device))
    flex = _flex_attention(p.compile and q.is_cuda)
    return lambda: flex(q, k, v, block_mask=mask, scale=p.scale, enable_gqa=True)


def _vllm_window(p: Problem, rule: str) -> list[int]:
    if rule not in ("full", "window"):
        raise ValueError(f"vLLM's kernels have no sink tokens: no {rule!r} rule")
    return [-1, -1] if rule == "full" else [p.window - 1, 0]


def _vllm_flash(p: Problem, rule: str) -> Callable[[], Any]:
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    ws = _vllm_window(p, rule)
    return lambda: flash_attn_varlen_func(
        p.query, p.key_cache, p.value_cache, max_seqlen_q=p.q_len, cu_seqlens_q=p.query_start_loc,
        max_seqlen_k=p.context, seqused_k=p.seq_lens, softmax_scale=p.scale, causal=True,
        block_table=p.block_table, window_size=ws,
    )  # fmt: skip


def _vllm_triton(p: Problem, rule: str) -> Callable[[], Any]:
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    ws, o = tuple(_vllm_window(p, rule)), torch.empty_like(p.query)

    def run() -> torch.Tensor:
        unified_attention(p.query, p.key_cache, p.value_cache, o, p.query_start_loc, p.q_len, p.seq_lens, p.context,
                          p.scale, True, ws, p.block_table, 0.0, None, None, None)  # fmt: skip
        return o

    return run


#: name -> (the rule its output follows, label, builder(problem, rule) -> callable; raises if it cannot run here).
#: torch's run on the GPU machine (torch + Triton, no vLLM); vLLM's join in wherever vLLM is importable.
BASELINES: dict[str, tuple[str, str, Callable[[Problem, str], Callable[[], Any]]]] = {
    "sdpa_flash_full": ("full", "FA2 (SDPA) full", _sdpa_flash),
    "flex_full": ("full", "Flex full", _flex),
    "flex_local": ("local", "Flex sinks+window", _flex),
    "vllm_flash_full": ("full", "vLLM FA full", _vllm_flash),
    "vllm_flash_swa": ("window", "vLLM FA SWA", _vllm_flash),
    "vllm_triton_full": ("full", "vLLM Triton full", _vllm_triton),
    "vllm_triton_swa": ("window", "vLLM Triton SWA", _vllm_triton),
}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest error of any (token, head) row relative to that row's largest value."""
    err = (got.float() - want.float()).abs().amax(-1)
    return float((err / want.float().abs().amax(-1).clamp_min(1e-6)).max())


def try_baselines(
    p: Problem, deadline: float, want: Callable[[str], torch.Tensor]
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """Build and run each baseline once (compiling it) and compare it with ``want(rule)``: the ones that agree,
    and ``<name>_err`` / ``<name>_error`` / ``disagree`` entries for the row."""
    fns: dict[str, Callable[[], Any]] = {}
    info: dict[str, Any] = {}
    for name, (rule, _, build) in BASELINES.items():
        if time.monotonic() > deadline:
            info[f"{name}_error"] = "time budget"
            continue
        try:
            fn = build(p, rule)
            err = rel_err(p.rows(fn()), want(rule))
        except Exception as exc:
            info[f"{name}_error"] = repr(exc)[:200]
            continue
        info[f"{name}_err"] = round(err, 4)
        if err <= BASELINE_RTOL:
            fns[name] = fn
        else:
            info.setdefault("disagree", []).append(name)
    return fns, info


def flash_only() -> Any:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
