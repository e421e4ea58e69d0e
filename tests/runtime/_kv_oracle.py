"""An oracle for which KV blocks a local layer must still hold, written from the attention rule alone (not from
`localattn_runtime.layers`, whose block arithmetic the manager uses). Loaded by path (runpy) from the tests."""

from __future__ import annotations


def visible(query: int, key: int, *, window: int, sinks: int, min_context_length: int) -> bool:
    """docs/runtime.md's rule: a query at i sees key j <= i iff i + 1 < minContextLength, j < S or j > i - W."""
    return key <= query and (query + 1 < min_context_length or key < sinks or key > query - window)


def kept_blocks(num_computed: int, num_blocks: int, *, block_size: int, window: int, sinks: int,
                min_context_length: int, extra: int = 0) -> list[bool]:
    """Which of a request's blocks must be held once `num_computed` tokens are computed: a block stays iff a
    future query (positions num_computed, num_computed + 1, ...) sees one of its keys, or it holds one of the
    `extra` tokens vLLM retains below the window for multi-token prediction (its `SlidingWindowManager` rule).

    For key k the first future query that could see it, max(num_computed, k), sees the most of the past (later
    queries' windows only move right, and they are no more below minContextLength), so it is the one checked;
    the next few are checked as well, which costs little and keeps the oracle honest if that ever changed.
    """
    kept = []
    for b in range(num_blocks):
        keys = range(b * block_size, (b + 1) * block_size)
        seen = any(visible(q, k, window=window, sinks=sinks, min_context_length=min_context_length)
                   for k in keys for q in range(max(num_computed, k), max(num_computed, k) + 3))
        retained = any(k >= num_computed - window + 1 - extra for k in keys)
        kept.append(seen or retained)
    return kept
