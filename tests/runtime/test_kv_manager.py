"""The local-layer KV manager inside vLLM's own `KVCacheManager` (coordinator, block pool, request hashing), no
engine: which blocks a request keeps (against a brute-force oracle of the attention rule, not the rule functions
the manager calls), `extra_retained_tokens`, and sparse prefix-cache hits that survive eviction of the middle."""

from __future__ import annotations

import runpy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from localattn_runtime import kv

BS = 16
LAYER = "model.layers.1.self_attn.attn"


_oracle = runpy.run_path(str(Path(__file__).with_name("_kv_oracle.py")))
_kept_blocks = _oracle["kept_blocks"]


def oracle_kept(num_computed: int, num_blocks: int, **kw: Any) -> list[bool]:
    return list(_kept_blocks(num_computed, num_blocks, block_size=BS, **kw))


def _manager(spec: kv.SinkWindowSpec, num_blocks: int, *, retention_interval: int | None = None) -> Any:
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import init_none_hash
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec

    kv.register_spec()
    init_none_hash(sha256)
    cfg = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                        kv_cache_groups=[KVCacheGroupSpec([LAYER], spec)],
                        prefix_cache_retention_interval=retention_interval)
    return KVCacheManager(cfg, max_model_len=4096, scheduler_block_size=BS, hash_block_size=BS,
                          max_in_flight_tokens=256, enable_caching=True)


def _request(rid: str, tokens: list[int]) -> Any:
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher
    from vllm.v1.request import Request

    return Request(rid, tokens, SamplingParams(max_tokens=1), None,
                   block_hasher=get_request_block_hasher(BS, sha256))


def _spec(**kw: Any) -> kv.SinkWindowSpec:
    base: dict[str, Any] = {"block_size": BS, "num_kv_heads": 1, "head_size": 8, "dtype": torch.float32,
                            "sliding_window": 64, "sink_tokens": 20, "min_context_length": 0}
    return kv.SinkWindowSpec(**{**base, **kw})


def _prefill(mgr: Any, req: Any, chunk: int, held: list[tuple[int, list[bool]]] | None = None) -> None:
    """Schedule the request's prompt in chunks as vLLM's scheduler does, recording which blocks it holds."""
    blocks, hit, _ = mgr.get_computed_blocks(req)
    first = True
    while req.num_computed_tokens < req.num_tokens:
        n = min(chunk, req.num_tokens - req.num_computed_tokens - (hit if first else 0))
        if first:
            assert mgr.allocate_slots(req, n, num_new_computed_tokens=hit, new_computed_blocks=blocks) is not None
            req.num_computed_tokens += hit
            first = False
        else:
            assert mgr.allocate_slots(req, n) is not None
        if held is not None:
            table = _table(mgr, req)
            held.append((req.num_computed_tokens, [not b.is_null for b in table]))
        req.num_computed_tokens += n


def _table(mgr: Any, req: Any) -> list[Any]:
    return list(mgr.coordinator.single_type_managers[0].req_to_blocks[req.request_id])


@pytest.mark.parametrize(("extra", "min_context_length"), [(0, 0), (7, 0), (40, 0), (0, 300)])
def test_manager_keeps_exactly_the_blocks_future_queries_read(extra: int, min_context_length: int) -> None:
    """Built the way vLLM builds it: `extra_retained_tokens` is set with `dataclasses.replace` on the spec."""
    spec = replace(_spec(min_context_length=min_context_length), extra_retained_tokens=extra)
    assert type(spec) is kv.SinkWindowSpec and spec.extra_retained_tokens == extra
    mgr = _manager(spec, 400)
    req = _request("a", list(range(3, 1003)))
    held: list[tuple[int, list[bool]]] = []
    _prefill(mgr, req, 48, held)
    for computed, kept in held[1:]:
        want = oracle_kept(computed, len(kept), window=64, sinks=20, min_context_length=min_context_length,
                           extra=extra)
        # blocks allocated for the chunk in flight are held whatever the oracle says about them
        n_done = -(-computed // BS)
        assert kept[:n_done] == want[:n_done], f"after {computed} computed tokens"


def test_admission_counts_what_the_manager_keeps() -> None:
    """With extra retained tokens, the per-request cap vLLM admits by bounds the blocks actually held."""
    spec = replace(_spec(), extra_retained_tokens=40)
    cap = spec.max_admission_blocks_per_request(max_in_flight_tokens=48, max_model_len=4096)
    mgr = _manager(spec, 400)
    req = _request("a", list(range(3, 1003)))
    held: list[tuple[int, list[bool]]] = []
    _prefill(mgr, req, 48, held)
    assert max(sum(k) for _, k in held) <= cap
    assert max(sum(k) for _, k in held) >= cap - 2  # and the cap is not loose: the 40 extra tokens are held


def _evict_middle(mgr: Any, prompt: list[int]) -> list[Any]:
    """Run `prompt` to the end and free it, then run an unrelated request that evicts the oldest free blocks:
    the middle blocks the local layer freed early. Returns the first request's block table at its end."""
    a = _request("a", prompt)
    _prefill(mgr, a, 128)
    table = _table(mgr, a)
    mgr.free(a)
    pool = mgr.block_pool
    fresh_and_middle = pool.get_num_free_blocks() - len([b for b in table if not b.is_null])
    b = _request("b", [5000 + i for i in range(fresh_and_middle * BS)])
    _prefill(mgr, b, 128)
    mgr.free(b)
    return table


def test_shared_prefix_hits_after_the_middle_is_evicted() -> None:
    mgr = _manager(_spec(), 120)
    prompt = [3 + i % 997 for i in range(1000)]
    table = _evict_middle(mgr, prompt)
    pool = mgr.block_pool
    c = _request("c", [*prompt, 1, 2, 3])
    # the precondition: a dense scan would miss at block 2 (evicted), but sinks and tail are still cached
    assert pool.get_cached_block(c.block_hashes[2], [0]) is None
    assert all(pool.get_cached_block(c.block_hashes[i], [0]) for i in (0, 1, 57, 58, 59, 60, 61))
    blocks, hit, _ = mgr.get_computed_blocks(c)
    assert hit == 992  # 62 full blocks of the shared 1000 tokens: only the last partial block is recomputed
    got = blocks.blocks[0]
    assert got[:2] == table[:2] and got[58:62] == table[58:62]  # the first request's sink and window blocks
    # the middle comes back as null blocks: exactly what the oracle says a query at 992 no longer reads
    want = oracle_kept(992, 62, window=64, sinks=20, min_context_length=0)
    assert [not b.is_null for b in got] == want
    _prefill(mgr, c, 128)  # and the request then runs on from the hit
    assert c.num_computed_tokens == c.num_tokens


def test_a_hit_below_min_context_length_needs_every_block() -> None:
    """Queries below minContextLength read every key: a hit there must be dense (here: none after eviction)."""
    mgr = _manager(_spec(min_context_length=2000), 200)
    prompt = [3 + i % 997 for i in range(1000)]
    a = _request("a", prompt)
    _prefill(mgr, a, 128)
    assert all(not b.is_null for b in _table(mgr, a))  # nothing freed below minContextLength
    mgr.free(a)
    c = _request("c", [*prompt, 1])
    blocks, hit, _ = mgr.get_computed_blocks(c)
    assert hit == 992 and all(not b.is_null for b in blocks.blocks[0])


def test_eagle_hit_needs_one_more_block_and_drops_it() -> None:
    mgr = _manager(_spec(), 120)
    prompt = [3 + i % 997 for i in range(1000)]
    _evict_middle(mgr, prompt)
    c = _request("c", [*prompt, 1, 2, 3])
    blocks, hit = kv.SinkWindowManager.find_longest_cache_hit(
        c.block_hashes, c.num_tokens - 1, [0], mgr.block_pool, mgr.coordinator.single_type_managers[0].kv_cache_spec,
        drop_eagle_block=True, alignment_tokens=BS)
    assert hit == 61 * BS and len(blocks[0]) == 61
    assert [not b.is_null for b in blocks[0]] == [i < 2 or i >= 61 - 4 for i in range(61)]


@pytest.mark.parametrize("use_eagle", [False, True])
def test_only_blocks_some_hit_can_read_are_cached(use_eagle: bool) -> None:
    """With sparse retention (vLLM's prefix_cache_retention_interval), a block is cached iff a hit at some
    retained boundary (a multiple of the interval) reads it: brute force over every boundary."""
    spec, interval = _spec(), 8 * BS
    mask = kv.SinkWindowManager.reachable_block_mask(0, 62, BS, spec, use_eagle, retention_interval=interval)
    assert mask is not None
    from localattn_runtime import layers

    reachable = [False] * 62
    for boundary in range(interval, 62 * BS + interval, interval):
        n = boundary // BS + int(use_eagle)
        a, b = layers.hit_needed_blocks(n, window=64, sinks=20, min_context_length=0, block_size=BS,
                                        lookahead_block=use_eagle)
        for i in (*range(a), *range(b, n)):
            if i < 62:
                reachable[i] = True
    assert mask == reachable
    assert mask[:2] == [True, True] and not all(mask)
