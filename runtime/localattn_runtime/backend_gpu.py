"""vLLM's Triton attention backend with sink + window attention on local layers (NVIDIA GPUs, regular `vllm`).

Registered as `CUSTOM` and chosen with `--attention-backend CUSTOM`. Global layers run vLLM's Triton kernel
unchanged; a local layer runs `triton_forward.local_forward` (`localattn_kernels.triton` with the layer's window,
sinks and minContextLength). The backend's builder keeps attention out of CUDA graphs
(`LocalAttnTritonMetadataBuilder`).

Status: written against vLLM 0.32's `triton_attn.py`; the kernels and `triton_forward.local_forward` are tested
under `TRITON_INTERPRET=1` on CPU tensors and compiled for sm_80/sm_90, but the backend as a whole has not run
on a GPU: none was lent, and the GPU machine this project can borrow has no vLLM (see docs/runtime.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)

from localattn_runtime.dispatch import LocalLayerMixin
from localattn_runtime.triton_forward import local_forward


class LocalAttnTritonMetadataBuilder(TritonAttentionMetadataBuilder):
    """vLLM's Triton metadata builder, declaring that our forward is not captured in CUDA graphs.

    vLLM's Triton builder says ALWAYS, so under the default cudagraph mode (FULL_AND_PIECEWISE) vLLM would
    capture decode steps in one FULL graph, attention included. Our local forward reads nothing from the
    device on the host (minContextLength is applied inside the kernels; tested), so capture would not fail on
    a sync; but the decode kernel's split count and Triton specialisation change with the batch size, and
    capture and replay have only been checked at the kernel level (`tests/runtime/test_backend_gpu.py`, on a
    GPU), never inside a running vLLM, which the GPU machine this project borrows cannot run.
    UNIFORM_SINGLE_TOKEN_DECODE (the next level up) would capture decode-only steps whole; NEVER is the level
    known to be safe.
    vLLM then downgrades FULL_AND_PIECEWISE to PIECEWISE (logging a warning that names this backend and
    "support: AttentionCGSupport.NEVER"): the layers between attention ops still run as captured pieces,
    attention runs eagerly between them. An explicit FULL / FULL_DECODE_ONLY mode is refused at startup by
    vLLM with a ValueError.
    """

    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER


class LocalAttnTritonImpl(LocalLayerMixin, TritonAttentionImpl):
    def _unsupported_by_backend(self) -> str | None:
        from vllm.utils.torch_utils import is_quantized_kv_cache

        if is_quantized_kv_cache(self.kv_cache_dtype):
            return (f"localattn: local layers need an unquantized KV cache (kvCacheDtype auto, bfloat16 or float16), "
                    f"got {self.kv_cache_dtype}")
        if self.chunk_lookback != -1:
            return "localattn: local layers do not support chunked-local attention (chunk_lookback)"
        return None

    def fused_output_quant_supported(self, quant_key: Any) -> bool:
        """No: the local kernels write the output in the model's dtype; vLLM then quantises it as a separate op
        (without this, vLLM could fuse fp8 output quantisation into attention and hand forward an output_scale)."""
        return False

    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any, output: torch.Tensor,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None,
                ) -> torch.Tensor:
        if attn_metadata is None or not self._is_local(layer):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("localattn: local layers cannot fuse output quantisation")
        assert self._cfg is not None
        from localattn_kernels.layout import split_kv_cache_gpu

        key_cache, value_cache = split_kv_cache_gpu(kv_cache)
        out3 = output.view(output.shape[0], self.num_heads, self.head_size)
        local_forward(query, key_cache, value_cache, out3, block_table=attn_metadata.block_table,
                      seq_lens=attn_metadata.seq_lens, query_start_loc=attn_metadata.query_start_loc,
                      num_actual_tokens=attn_metadata.num_actual_tokens, max_query_len=attn_metadata.max_query_len,
                      cfg=self._cfg, scale=self.scale)
        return output


class LocalAttnTritonBackend(TritonAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[LocalAttnTritonImpl]:
        return LocalAttnTritonImpl

    @staticmethod
    def get_builder_cls() -> type[LocalAttnTritonMetadataBuilder]:
        return LocalAttnTritonMetadataBuilder
