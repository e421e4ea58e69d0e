"""The layout contract, checked against vLLM 0.32's own CPU cache writer."""

from __future__ import annotations

import pytest
import torch

from localattn_kernels import layout
from localattn_kernels.reference import local_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("block_size", "head_size"), [(32, 64), (128, 128), (32, 80)])
def test_write_kv_matches_vllm_writer(block_size: int, head_size: int, dtype: torch.dtype) -> None:
    ops = pytest.importorskip("vllm._custom_ops")
    isa = "vec" if head_size % 32 == 0 else "vec16"
    shape = layout.kv_cache_shape(5, 2, block_size, head_size)
    ours, theirs = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    key, value = torch.randn(70, 2, head_size).to(dtype), torch.randn(70, 2, head_size).to(dtype)
    slots = torch.randperm(5 * block_size)[:70]
    layout.write_kv(*layout.split_kv_cache(ours), key, value, slots, isa)
    ops.cpu_attn_reshape_and_cache(key, value, *layout.split_kv_cache(theirs), slots, isa)
    assert torch.equal(ours, theirs)


def test_split_views_share_the_cache_memory() -> None:
    kv = torch.zeros(layout.kv_cache_shape(3, 2, 32, 64))
    key_cache, value_cache = layout.split_kv_cache(kv)
    assert key_cache.shape == value_cache.shape == (3, 2, 32, 64)
    key_cache[1, 1, 2, 3] = 1.0
    value_cache[2, 0, 31, 63] = 2.0
    flat = kv.view(3, 2, -1)  # each (block, head) owns 2 * block_size * head_size elements
    assert flat[1, 1, 2 * 64 + 3] == 1.0  # keys: the first half
    assert flat[2, 0, 32 * 64 + 31 * 64 + 63] == 2.0  # values: the second half
    gk, gv = layout.split_kv_cache_gpu(kv)
    assert gv.data_ptr() == kv.data_ptr() + 64 * kv.element_size()
    assert gk.shape == (3, 32, 2, 64) and gk.data_ptr() == kv.data_ptr()


def test_num_sink_blocks() -> None:
    assert [layout.num_sink_blocks(s, 32) for s in (0, 1, 32, 33)] == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="sinks"):
        layout.num_sink_blocks(-1, 32)


def test_needed_blocks_by_example() -> None:
    # 1000 tokens, blocks of 128, W=300, S=4: sink block 0 and the window 700..999 (blocks 5..7).
    assert layout.needed_blocks(1000, window=300, sinks=4, block_size=128) == [0, 5, 6, 7]
    assert layout.needed_blocks(10, window=300, sinks=4, block_size=128) == [0]
    with pytest.raises(ValueError, match="window"):
        layout.needed_blocks(10, window=0, sinks=4, block_size=16)


@pytest.mark.parametrize("sinks", [0, 3, 40])
@pytest.mark.parametrize("window", [1, 16, 50])
def test_needed_blocks_are_exactly_the_blocks_the_mask_touches(window: int, sinks: int) -> None:
    block_size = 16
    for seq_len in (1, 15, 16, 17, 49, 120):
        for q_len in {1, min(seq_len, 20)}:
            mask = local_mask(torch.arange(seq_len - q_len, seq_len), seq_len, window=window, sinks=sinks)
            touched = sorted({j // block_size for j in mask.any(0).nonzero().flatten().tolist()})
            assert (
                layout.needed_blocks(seq_len, window=window, sinks=sinks, block_size=block_size, q_len=q_len)
                == touched
            )
