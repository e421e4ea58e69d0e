"""vLLM's Triton attention backend with sink + window attention on local layers (NVIDIA GPUs, regular `vllm`).

Registered as `CUSTOM` and chosen with `--attention-backend CUSTOM`. Global layers (and steps where every query
attends fully) run vLLM's Triton kernel unchanged. On a local layer, `localattn_kernels.triton` computes the
locally-attending queries; the queries still below minContextLength go through the same kernel with a window
longer than any sequence and no sinks, which is exactly causal full attention.

Status: written against vLLM 0.32's `triton_attn.py`; the kernels are tested under `TRITON_INTERPRET=1` and
`local_forward` below on CPU tensors, but the backend as a whole has not run on a GPU here (none was available).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend, TritonAttentionImpl

from localattn_runtime.dispatch import local_layer_config, split_queries

if TYPE_CHECKING:
    from localattn_runtime.config import LocalAttnConfig


def local_forward(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, out: torch.Tensor, *,
                  block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                  max_query_len: int, cfg: LocalAttnConfig, scale: float, max_model_len: int) -> None:
    """A local layer's attention for one step, written into `out` ([num_tokens, heads, head_size])."""
    from localattn_kernels.triton import paged_local_attention

    n = int(query_start_loc[-1])
    split = split_queries(query_start_loc, seq_lens, cfg.min_context_length)
    if split.local is not None and split.full is None:
        paged_local_attention(query[:n], key_cache, value_cache, block_table=block_table, seq_lens=seq_lens,
                              query_start_loc=query_start_loc, window=cfg.window_size, sinks=cfg.sink_tokens,
                              scale=scale, out=out[:n], max_query_len=max_query_len)
        return
    for part, window, sinks in ((split.full, max_model_len + 1, 0), (split.local, cfg.window_size, cfg.sink_tokens)):
        if part is None:
            continue
        q = query.index_select(0, part.index)
        o = torch.empty_like(q)
        paged_local_attention(q, key_cache, value_cache, block_table=block_table[part.rows],
                              seq_lens=part.seq_lens.to(seq_lens.dtype),
                              query_start_loc=part.query_start_loc.to(query_start_loc.dtype), window=window,
                              sinks=sinks, scale=scale, out=o, max_query_len=part.max_query_len)
        out.index_copy_(0, part.index, o)


class LocalAttnTritonImpl(TritonAttentionImpl):
    localattn_impl = True  # marks our impls for `dispatch.local_layer_config`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from vllm.config import get_current_vllm_config

        self._vllm_config = get_current_vllm_config()
        self._local: bool | None = None
        self._cfg: LocalAttnConfig | None = None

    def _is_local(self, layer: Any) -> bool:
        if self._local is None:
            self._cfg = local_layer_config(layer, self._vllm_config)
            self._local = self._cfg is not None
            if self._local and self.kv_cache_dtype != "auto":
                raise NotImplementedError("localattn: local layers need an unquantized KV cache (kvCacheDtype auto)")
        return self._local

    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any, output: torch.Tensor,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None,
                ) -> torch.Tensor:
        if attn_metadata is None or output_scale is not None or not self._is_local(layer):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        assert self._cfg is not None
        from localattn_kernels.layout import split_kv_cache_gpu

        key_cache, value_cache = split_kv_cache_gpu(kv_cache)
        out3 = output.view(output.shape[0], self.num_heads, self.head_size)
        local_forward(query, key_cache, value_cache, out3, block_table=attn_metadata.block_table,
                      seq_lens=attn_metadata.seq_lens, query_start_loc=attn_metadata.query_start_loc,
                      max_query_len=attn_metadata.max_query_len, cfg=self._cfg, scale=self.scale,
                      max_model_len=self._vllm_config.model_config.max_model_len)
        return output


class LocalAttnTritonBackend(TritonAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[LocalAttnTritonImpl]:
        return LocalAttnTritonImpl
