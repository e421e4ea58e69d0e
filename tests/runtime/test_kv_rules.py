"""The pure rules behind the KV manager and the backend's query split (no vLLM needed)."""

from __future__ import annotations

import pytest

from localattn_runtime import layers


@pytest.mark.parametrize(("name", "index"), [
    ("model.layers.0.self_attn.attn", 0),
    ("model.layers.17.self_attn.attn", 17),
    ("language_model.model.layers.3.self_attn.attn", 3),
    ("lm_head", None),
])
def test_layer_index(name: str, index: int | None) -> None:
    assert layers.layer_index(name) == index


def test_full_queries_per_token() -> None:
    # minContextLength 100: positions 0..98 attend fully, position 99 (100 tokens of context) locally.
    assert layers.first_local_position(100) == 99
    assert layers.num_full_queries(0, 50, 100) == 50
    assert layers.num_full_queries(0, 200, 100) == 99
    assert layers.num_full_queries(98, 1, 100) == 1
    assert layers.num_full_queries(99, 1, 100) == 0
    assert layers.num_full_queries(0, 10, 0) == 0


def test_freeable_blocks_keep_sinks_and_window() -> None:
    kw = {"window": 64, "sinks": 40, "min_context_length": 0, "block_size": 32}
    assert layers.freeable_blocks(0, **kw) == (2, 2)
    assert layers.freeable_blocks(100, **kw) == (2, 2)  # keys >= 37 needed: block 1 still in the window
    assert layers.freeable_blocks(160, **kw) == (2, 3)  # keys >= 97: block 2 (64..95) is free
    assert layers.freeable_blocks(1000, **kw) == (2, 29)
    no_sinks = {**kw, "sinks": 0}
    assert layers.freeable_blocks(1000, **no_sinks) == (0, 29)


def test_nothing_freed_before_min_context_length() -> None:
    kw = {"window": 64, "sinks": 4, "block_size": 32}
    assert layers.freeable_blocks(500, min_context_length=600, **kw) == (1, 1)
    assert layers.freeable_blocks(599, min_context_length=600, **kw) == (1, 16)


def test_blocks_in_use() -> None:
    kw = {"window": 512, "sinks": 4, "min_context_length": 0, "block_size": 128}
    assert layers.blocks_in_use(100, **kw) == 1
    full = 16384 // 128
    held = layers.blocks_in_use(16384, **kw)
    assert held == 1 + 4  # one sink block + the window's 4 blocks (the next token's block is allocated later)
    assert held * 8 <= full


def test_admission_blocks_bound_the_peak() -> None:
    kw = {"window": 64, "sinks": 4, "min_context_length": 0, "block_size": 32}
    cap = layers.admission_blocks(max_in_flight_tokens=256, max_model_len=2048, **kw)
    assert cap == -(-(63 + 256) // 32) + 1 + 1
    for c in range(0, 2048 - 256, 7):
        start, end = layers.freeable_blocks(c, **kw)
        held = -(-(c + 256) // 32) - (end - start)
        assert held <= cap
    assert layers.admission_blocks(max_in_flight_tokens=4096, max_model_len=2048, **kw) == 64
