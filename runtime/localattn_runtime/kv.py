"""KV cache spec and manager for local layers: vLLM frees blocks outside sinks + window, keeps the sink blocks.

vLLM's `SlidingWindowManager` frees every block left of the window, sinks included. `SinkWindowSpec` extends
`SlidingWindowSpec` (so vLLM's hybrid allocator groups local layers apart from the global ones, and falls back
to full allocation when the hybrid manager is off) with the sink count and minContextLength; its manager frees
the middle range `[ceil(S/block_size), (c - W + 1) // block_size)` instead of the prefix.

Local layers get this spec through `install_spec_hook`: vLLM 0.32 builds a layer's spec in
`Attention.get_kv_cache_spec` and lets the backend adjust it only without knowing the layer
(`AttentionBackend.customize_spec`, vllm issue 42449), so the hook wraps that one method.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.v1.core.kv_cache_utils import resolve_block_hashes
from vllm.v1.core.single_type_kv_cache_manager import SlidingWindowManager
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheSpec, SlidingWindowSpec

from localattn_runtime import layers

if TYPE_CHECKING:
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import BlockHashList, KVCacheBlock

    from localattn_runtime.config import LocalAttnConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SinkWindowSpec(SlidingWindowSpec):
    """A local layer: attends to `sink_tokens` sinks plus a `sliding_window`-token window."""

    sink_tokens: int = 0
    min_context_length: int = 0

    def max_admission_blocks_per_request(self, max_in_flight_tokens: int, max_model_len: int) -> int:
        return layers.admission_blocks(
            window=self.sliding_window, sinks=self.sink_tokens, min_context_length=self.min_context_length,
            block_size=self.block_size, max_in_flight_tokens=max_in_flight_tokens + self.extra_retained_tokens,
            max_model_len=max_model_len)

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, KVCacheSpec]) -> bool:
        return all(isinstance(s, SinkWindowSpec) and s.sliding_window == self.sliding_window
                   and s.sink_tokens == self.sink_tokens and s.min_context_length == self.min_context_length
                   for s in kv_cache_specs.values())


class SinkWindowManager(SlidingWindowManager):
    """Frees a local layer's blocks outside sinks + window, and reports how many through our metrics.

    Skipped tokens are not a prefix here, so `get_num_skipped_tokens` reports none: vLLM's prefix-skip
    shortcuts (which assume a prefix) stay off, and `remove_skipped_blocks` frees the middle range itself.
    Prefix-cache hits are sparse, as a local layer reads: the sink blocks plus the window before the hit's end
    (`layers.hit_needed_blocks`); the middle is handed out as null blocks. Middle blocks are freed early, so
    they are the first evicted; a dense hit would die with them and recompute almost the whole prefix.
    """

    def __init__(self, kv_cache_spec: SinkWindowSpec, **kwargs: Any) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.sink_tokens = kv_cache_spec.sink_tokens
        self.min_context_length = kv_cache_spec.min_context_length
        self.num_blocks_freed = 0

    def get_num_skipped_tokens(self, num_computed_tokens: int) -> int:
        return 0

    def remove_skipped_blocks(self, request_id: str, processed_computed_tokens: int,
                              num_prompt_tokens: int | None = None) -> None:
        blocks = self.req_to_blocks.get(request_id)
        if not blocks:
            return
        start, end = layers.freeable_blocks(
            processed_computed_tokens, window=self.sliding_window, sinks=self.sink_tokens,
            min_context_length=self.min_context_length, block_size=self.block_size,
            extra_retained=self.extra_retained_tokens)
        end = min(end, len(blocks))
        freed: list[KVCacheBlock] = []
        # Right to left, stopping at the first already-freed block: earlier steps freed everything below it.
        for i in range(end - 1, start - 1, -1):
            if blocks[i] is self._null_block:
                break
            freed.append(blocks[i])
            blocks[i] = self._null_block
        if freed:
            self.block_pool.free_blocks(freed)
            self.num_blocks_freed += len(freed)
            _report_freed(len(freed))

    @classmethod
    def reachable_block_mask(cls, start_block: int, end_block: int, alignment_tokens: int | None,
                             kv_cache_spec: KVCacheSpec, use_eagle: bool, retention_interval: int | None = None,
                             reachable_boundaries: Sequence[int] = (), dcp_world_size: int = 1,
                             final_segment_end_block: int | None = None) -> list[bool] | None:
        """vLLM's sliding-window policy (cache only the window tails a hit at a retained boundary reads), plus
        the blocks every hit reads: the sink blocks, and all blocks a query below minContextLength reads."""
        assert isinstance(kv_cache_spec, SinkWindowSpec)
        mask = SlidingWindowManager.reachable_block_mask(
            start_block, end_block, alignment_tokens, kv_cache_spec, use_eagle, retention_interval,
            reachable_boundaries, dcp_world_size, final_segment_end_block)
        if mask is None:
            return None
        block_size = kv_cache_spec.block_size * dcp_world_size
        always = max(-(-kv_cache_spec.sink_tokens // block_size),
                     -(-layers.first_local_position(kv_cache_spec.min_context_length) // block_size)
                     + int(use_eagle))
        for i in range(start_block, min(end_block, always)):
            mask[i - start_block] = True
        return mask

    @classmethod
    def find_longest_cache_hit(cls, block_hashes: BlockHashList, max_length: int, kv_cache_group_ids: list[int],
                               block_pool: BlockPool, kv_cache_spec: KVCacheSpec, drop_eagle_block: bool,
                               alignment_tokens: int, dcp_world_size: int = 1,
                               pcp_world_size: int = 1) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        """The longest aligned hit whose needed blocks (`layers.hit_needed_blocks`) are all cached.

        Candidates are tried from the longest down; a miss at block j rules out every candidate that needs j,
        so the scan jumps below it and each block hash is looked up at most once.
        """
        assert isinstance(kv_cache_spec, SinkWindowSpec)
        block_size = kv_cache_spec.block_size
        hashes = resolve_block_hashes(block_hashes, block_pool.hash_block_size, block_size,
                                      alignment_tokens=alignment_tokens)
        found: dict[int, list[KVCacheBlock] | None] = {}

        def cached(i: int) -> list[KVCacheBlock] | None:
            if i not in found:
                found[i] = block_pool.get_cached_block(hashes[i], kv_cache_group_ids)
            return found[i]

        def first_miss(lo: int, hi: int) -> int | None:  # the rightmost uncached block in [lo, hi)
            return next((j for j in range(hi - 1, lo - 1, -1) if cached(j) is None), None)

        eagle = int(drop_eagle_block)
        n = max_length // block_size
        sink_end = tail_start = 0
        while n > eagle:
            if (n - eagle) * block_size % alignment_tokens:
                n -= 1
                continue
            sink_end, tail_start = layers.hit_needed_blocks(
                n, window=kv_cache_spec.sliding_window, sinks=kv_cache_spec.sink_tokens,
                min_context_length=kv_cache_spec.min_context_length, block_size=block_size,
                lookahead_block=drop_eagle_block)
            miss = first_miss(tail_start, n)
            if miss is None:
                miss = first_miss(0, sink_end)
            if miss is None:
                break
            n = miss
        if n <= eagle:
            return tuple([] for _ in kv_cache_group_ids), 0
        null = block_pool.null_block
        computed: tuple[list[KVCacheBlock], ...] = tuple([null] * n for _ in kv_cache_group_ids)
        for i in (*range(sink_end), *range(tail_start, n)):
            blks = found[i]
            assert blks is not None
            for out, blk in zip(computed, blks, strict=True):
                out[i] = blk
        if eagle:
            for out in computed:
                out.pop()
        return computed, (n - eagle) * block_size


def _report_freed(n: int) -> None:
    try:
        from localattn_runtime import metrics
    except ImportError:
        return
    try:
        metrics.kv_blocks_freed(n)
    except Exception:  # metrics must never break the scheduler
        log.debug("localattn: kv_blocks_freed(%d) failed", n, exc_info=True)


def register_spec() -> None:
    """Register the spec and its manager (idempotent: vLLM accepts the same registration twice).

    vLLM registers its built-in specs lazily, only while the registry is empty, so they go first.
    """
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry, register_kv_cache_spec

    KVCacheSpecRegistry._ensure_registered()
    register_kv_cache_spec(manager_class=SinkWindowManager, uniform_type_base_spec=SinkWindowSpec)(SinkWindowSpec)


def local_spec(spec: KVCacheSpec, cfg: LocalAttnConfig) -> KVCacheSpec:
    """The local-layer spec for a layer whose stock spec is `spec` (full attention; anything else is kept)."""
    if type(spec) is not FullAttentionSpec or spec.sliding_window is not None:
        return spec
    return SinkWindowSpec(
        block_size=spec.block_size, num_kv_heads=spec.num_kv_heads, head_size=spec.head_size,
        head_size_v=spec.head_size_v, dtype=spec.dtype, kv_quant_mode=spec.kv_quant_mode,
        page_size_padded=spec.page_size_padded, sliding_window=cfg.window_size, sink_tokens=cfg.sink_tokens,
        min_context_length=cfg.min_context_length)


def install_spec_hook() -> None:
    """Make `Attention.get_kv_cache_spec` return `SinkWindowSpec` for our backend's local layers (idempotent)."""
    from vllm.model_executor.layers.attention.attention import Attention

    original = Attention.get_kv_cache_spec
    if getattr(original, "_localattn", False):
        return

    def get_kv_cache_spec(self: Attention, vllm_config: Any) -> KVCacheSpec | None:
        spec = original(self, vllm_config)
        if spec is None:
            return None
        from localattn_runtime.dispatch import local_layer_config

        cfg = local_layer_config(self, vllm_config)
        return local_spec(spec, cfg) if cfg is not None else spec

    get_kv_cache_spec._localattn = True  # type: ignore[attr-defined]
    Attention.get_kv_cache_spec = get_kv_cache_spec  # type: ignore[method-assign]
