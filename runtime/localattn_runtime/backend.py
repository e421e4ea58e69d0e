"""vLLM's CPU attention backend with sink + window attention on local layers.

Registered over `CPU_ATTN` (vLLM on CPU asks for that name whatever `--attention-backend` says), so
`get_name()` stays "CPU_ATTN". K/V are written to the cache exactly as the stock backend does (vLLM calls
`do_kv_cache_update`, inherited). Per layer, `forward` then runs:

* a global layer (or a layer when the plugin is off): the stock CPU kernel, unchanged;
* a local layer: queries whose position is below minContextLength - 1 (they attend fully) go through the stock
  kernel, all others through `localattn_kernels.cpu.planned_local_attention`. The split, and the kernels'
  per-batch work (host reads of the lengths, their checks, the decode / prefill rows, int32 copies:
  `localattn_kernels.cpu.plan_step`), are computed once per step by the metadata builder and shared by every
  layer of the group; each layer checks its own shapes once, at its first local forward
  (benchmarks/runtime_step_overhead.py measures what this saves).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from vllm import _custom_ops as ops
from vllm import envs
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from localattn_kernels.cpu import (
    StepPlan,
    check_layer_args,
    native_supports,
    plan_step,
    planned_local_attention,
)
from localattn_kernels.layout import PACKED_ISAS, split_kv_cache
from localattn_runtime import layers
from localattn_runtime.dispatch import LocalLayerMixin, active_config, model_num_layers, split_queries


@dataclass
class LocalBatch:
    """The queries that attend locally: rows `index` of the step's query (None: the first `plan.num_tokens`
    rows, in order), and the kernels' plan of that batch."""

    index: torch.Tensor | None
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    plan: StepPlan


def _local_batch(index: torch.Tensor | None, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                 block_table: torch.Tensor, *, block_size: int, num_tokens: int,
                 repack: tuple[int, int] | None) -> LocalBatch:
    plan = plan_step(block_table, seq_lens, query_start_loc, block_size=block_size, num_tokens=num_tokens,
                     repack=repack)
    return LocalBatch(index, query_start_loc, seq_lens, block_table, plan)


@dataclass
class LocalAttnMetadata(CPUAttentionMetadata):
    """Stock metadata plus the step's split into fully-attending and locally-attending queries."""

    full: CPUAttentionMetadata | None = None  # stock metadata for the fully-attending queries of a mixed step
    full_index: torch.Tensor | None = None  # their rows in the step's query
    local: LocalBatch | None = None  # None: no query attends locally (the whole step is stock)


class LocalAttnMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        cfg = active_config(vllm_config)
        n = model_num_layers(vllm_config)
        idx = [layers.layer_index(name) for name in layer_names]
        # Only groups with a local layer need the split (a hybrid KV config puts global layers apart).
        self.cfg = cfg if cfg is not None and any(i is not None and not cfg.is_global(i, n) for i in idx) else None
        self.block_size = int(kv_cache_spec.block_size)
        # A packed cache (AMX): each step's plan lists the blocks its local layers copy for the C kernels.
        self.repack = ((self.cfg.window_size, self.cfg.sink_tokens)
                       if self.cfg is not None and self.isa in PACKED_ISAS else None)

    def _scheduler_metadata(self, seq_lens: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor:
        return ops.cpu_attn_get_scheduler_metadata(
            num_reqs=int(seq_lens.shape[0]), num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, seq_lens=seq_lens,
            dtype=self.dtype,  # type: ignore[arg-type]  # a torch dtype once vLLM resolved the model config
            query_start_loc=query_start_loc, causal=True, sliding_window_size=self.window_size, isa=self.isa,
            enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV, dynamic_causal=None, kv_cache_dtype=self.kv_cache_dtype)

    def build(self, common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False) -> Any:
        base = super().build(common_prefix_len, common_attn_metadata, fast_build)
        if self.cfg is None or self.is_cross_attention or self.is_encoder_only_attention:
            return base
        meta = LocalAttnMetadata(**{f.name: getattr(base, f.name) for f in fields(CPUAttentionMetadata)})
        n = base.num_actual_tokens
        if layers.first_local_position(self.cfg.min_context_length) == 0:  # no dynamic scope: all local
            meta.local = _local_batch(None, base.query_start_loc, base.seq_lens, base.block_table,
                                      block_size=self.block_size, num_tokens=n, repack=self.repack)
            return meta
        split = split_queries(base.query_start_loc, base.seq_lens, self.cfg.min_context_length)
        if split.local is None:  # every query attends fully: stock
            return meta
        if split.full is None:
            meta.local = _local_batch(None, base.query_start_loc, base.seq_lens, base.block_table,
                                      block_size=self.block_size, num_tokens=n, repack=self.repack)
            return meta
        f, loc = split.full, split.local
        qsl, sl = f.query_start_loc.to(base.query_start_loc.dtype), f.seq_lens.to(base.seq_lens.dtype)
        meta.full = CPUAttentionMetadata(
            num_actual_tokens=int(f.index.shape[0]), max_query_len=f.max_query_len, query_start_loc=qsl,
            max_seq_len=int(sl.max()), seq_lens=sl, block_table=base.block_table[f.rows],
            slot_mapping=base.slot_mapping, scheduler_metadata=self._scheduler_metadata(sl, qsl), causal=True)
        meta.full_index = f.index
        meta.local = _local_batch(loc.index, loc.query_start_loc.to(base.query_start_loc.dtype),
                                  loc.seq_lens.to(base.seq_lens.dtype), base.block_table[loc.rows],
                                  block_size=self.block_size, num_tokens=int(loc.index.shape[0]),
                                  repack=self.repack)
        return meta


class LocalAttnImpl(LocalLayerMixin, CPUAttentionBackendImpl):
    """Stock CPU attention on global layers; sink + window attention on local ones."""

    _native: bool | None = None  # whether the fused C kernels take this layer (checked at its first forward)

    def _unsupported_by_backend(self) -> str | None:
        if self.is_fp8_kv_cache:
            return ("localattn: local layers on CPU need an unquantized KV cache (kvCacheDtype auto); "
                    "fp8 is not supported by the CPU local kernel")
        return None

    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any, output: torch.Tensor,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None,
                ) -> torch.Tensor:
        if (attn_metadata is None or not isinstance(attn_metadata, LocalAttnMetadata)
                or attn_metadata.local is None or not self._is_local(layer)):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                                   output_scale, output_block_scale)
        assert self._cfg is not None
        meta = attn_metadata
        out3 = output.view(output.shape[0], self.num_heads, self.head_size)
        if meta.full is not None:
            assert meta.full_index is not None
            q_full = query.index_select(0, meta.full_index)
            o_full = torch.empty_like(q_full)
            super().forward(layer, q_full, key, value, kv_cache, meta.full, o_full)
            out3.index_copy_(0, meta.full_index, o_full)
        key_cache, value_cache = split_kv_cache(kv_cache)
        local = meta.local
        assert local is not None
        n = local.plan.num_tokens
        q_local = query[:n] if local.index is None else query.index_select(0, local.index)
        o_local = out3[:n] if local.index is None else torch.empty_like(q_local)
        isa = getattr(layer, "isa", "vec")
        if self._native is None:  # the layer's shapes, dtypes and ISA: the same every step
            check_layer_args(q_local, key_cache, value_cache, window=self._cfg.window_size,
                             sinks=self._cfg.sink_tokens, isa=isa)
            self._native = native_supports(q_local, key_cache, value_cache, isa)
        planned_local_attention(
            q_local, key_cache, value_cache, local.plan, window=self._cfg.window_size, sinks=self._cfg.sink_tokens,
            scale=self.scale, out=o_local, isa=isa, native=self._native)
        if local.index is not None:
            out3.index_copy_(0, local.index, o_local)
        return output


class LocalAttnBackend(CPUAttentionBackend):
    """Registered as CPU_ATTN; `get_name()` is inherited ("CPU_ATTN") as vLLM's CPU platform requires."""

    @staticmethod
    def get_impl_cls() -> type[LocalAttnImpl]:
        return LocalAttnImpl

    @staticmethod
    def get_builder_cls() -> type[LocalAttnMetadataBuilder]:
        return LocalAttnMetadataBuilder
