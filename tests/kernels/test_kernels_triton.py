"""Triton kernels against the reference: on the GPU when there is one, else under TRITON_INTERPRET=1 on CPU.

The interpreter is slow, so shapes are small and the matrix is a covering set rather than the full product.
Skips only when Triton itself is missing.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import pytest
import torch

from localattn_kernels import layout
from localattn_kernels.testing import TRITON_COVER, PagedCase, make_case

from .cases import DECODE, MIXED, SINKS, TOL, WINDOW

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _python_triton_modules() -> list[str]:
    """Triton's Python modules and ours; its C extension (``triton._C``) is shared, it cannot be loaded twice."""
    return [
        m for m in sys.modules
        if (m == "triton" or m.startswith(("triton.", "localattn_kernels.triton"))) and not m.startswith("triton._C")
    ]  # fmt: skip


def _load_kernels() -> ModuleType:
    """Import ``localattn_kernels.triton`` in interpreter mode (CPU only) without leaking it to other tests.

    Triton binds interpret mode when its own ``tl`` helpers and our kernels are decorated, i.e. at import.
    If something (vLLM) already imported Triton normally, import a private interpreted copy, then put the
    original modules back so the rest of the session is unaffected.
    """
    if DEVICE == "cuda":
        return importlib.import_module("localattn_kernels.triton")
    saved = {m: sys.modules.pop(m) for m in _python_triton_modules()}
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return importlib.import_module("localattn_kernels.triton")
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
        for m in _python_triton_modules():
            del sys.modules[m]
        sys.modules.update(saved)


lt = _load_kernels()


@pytest.fixture(autouse=True)
def _interpret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(requests: list[tuple[int, int]], **kw: object) -> PagedCase:
    return make_case(requests, gpu_layout=True, device=DEVICE, **kw)  # type: ignore[arg-type]


def _run(case: PagedCase, *, window: int, sinks: int, scale: float, **kw: object) -> torch.Tensor:
    return lt.paged_local_attention(
        case.query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
        query_start_loc=case.query_start_loc, window=window, sinks=sinks, scale=scale, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("head_size", "group", "block_size", "dtype"), TRITON_COVER)
def test_mixed_batch_prefill_kernel(head_size: int, group: int, block_size: int, dtype: torch.dtype) -> None:
    case = _case(
        MIXED, num_heads=group, num_kv_heads=1, head_size=head_size, block_size=block_size, dtype=dtype
    )
    for sinks in (SINKS, 0):
        want = case.reference(window=WINDOW, sinks=sinks, scale=head_size**-0.5)
        torch.testing.assert_close(
            _run(case, window=WINDOW, sinks=sinks, scale=head_size**-0.5), want, **TOL[dtype]
        )


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(("head_size", "group", "block_size", "dtype"), [TRITON_COVER[1], TRITON_COVER[4]])
def test_decode_kernel_split_kv(
    head_size: int, group: int, block_size: int, dtype: torch.dtype, num_splits: int
) -> None:
    case = _case(
        DECODE, num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=block_size, dtype=dtype
    )
    for window, sinks in (
        (WINDOW, SINKS),
        (WINDOW, 0),
        (400, 2),
    ):  # the last: W >= every length = full causal
        want = case.reference(window=window, sinks=sinks, scale=0.1)
        got = _run(case, window=window, sinks=sinks, scale=0.1, num_splits=num_splits)
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("num_splits", [1, 3])
def test_queries_below_full_below_attend_to_their_whole_prefix(num_splits: int) -> None:
    """The runtime's minContextLength inside the kernels: positions < full_below use the full causal rule."""
    requests = [(1, 90), (1, 91), (1, 300), (60, 120), (5, 5), (30, 200)]
    case = _case(requests, num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16)
    pos = torch.cat([torch.arange(s - q, s) for q, s in requests]).to(DEVICE)
    full = case.reference(window=10**6, sinks=0, scale=0.1)
    local = case.reference(window=WINDOW, sinks=SINKS, scale=0.1)
    want = torch.where((pos < 90)[:, None, None], full, local)
    got = _run(case, window=WINDOW, sinks=SINKS, scale=0.1, full_below=90)
    torch.testing.assert_close(got, want, **TOL[torch.float16])
    # Decode, split over the keys: the full-attention query reads 300 keys, the local ones 154 (W = 150, S = 4).
    decode = _case([(1, 300), (1, 301), (1, 500)], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                   dtype=torch.float16)  # fmt: skip
    full = decode.reference(window=10**6, sinks=0, scale=0.1)
    local = decode.reference(window=150, sinks=SINKS, scale=0.1)
    assert (full[0] - local[0]).abs().max() > 0.05  # position 299: the two rules really differ there
    want = torch.cat([full[:1], local[1:]])  # positions 299 | 300, 499
    got = _run(decode, window=150, sinks=SINKS, scale=0.1, full_below=300, num_splits=num_splits)
    torch.testing.assert_close(got, want, **TOL[torch.float16])
    with pytest.raises(ValueError, match="full_below"):
        _run(case, window=WINDOW, sinks=SINKS, scale=0.1, full_below=-1)


def test_fp32_and_odd_head_size() -> None:
    case = _case(
        [(1, 70), (6, 33)], num_heads=4, num_kv_heads=2, head_size=80, block_size=32, dtype=torch.float32
    )
    want = case.reference(window=WINDOW, sinks=SINKS, scale=0.1)
    torch.testing.assert_close(_run(case, window=WINDOW, sinks=SINKS, scale=0.1), want, **TOL[torch.float32])
    tiny = _case([(1, 70), (6, 33)], num_heads=4, num_kv_heads=2, head_size=8, block_size=16, dtype=torch.float16)
    want = tiny.reference(window=WINDOW, sinks=SINKS, scale=0.3)  # head 8: tiles padded to 16, masked
    torch.testing.assert_close(_run(tiny, window=WINDOW, sinks=SINKS, scale=0.3), want, **TOL[torch.float16])


def test_tiles_outside_sinks_and_window_are_never_loaded() -> None:
    requests = [(1, 300), (16, 200)]
    case = _case(requests, num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16)
    keep: set[int] = set()
    for r, (q_len, seq_len) in enumerate(requests):
        for b in layout.needed_blocks(seq_len, window=WINDOW, sinks=SINKS, block_size=16, q_len=q_len):
            keep.add(int(case.block_table[r, b]))
    poison = torch.tensor([b for b in range(case.key_cache.shape[0]) if b not in keep], device=DEVICE)
    case.key_cache[poison] = float("nan")
    case.value_cache[poison] = float("nan")
    want = case.reference(window=WINDOW, sinks=SINKS, scale=0.1)
    assert not want.isnan().any()  # the reference only reads the dense copies
    torch.testing.assert_close(_run(case, window=WINDOW, sinks=SINKS, scale=0.1), want, **TOL[torch.float16])
    decode_only = _case(
        [(1, 300)], num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16
    )
    blocks = decode_only.block_table[0, : 300 // 16 + 1].tolist()
    kept = {blocks[b] for b in layout.needed_blocks(300, window=WINDOW, sinks=SINKS, block_size=16)}
    for b in set(range(decode_only.key_cache.shape[0])) - kept:
        decode_only.key_cache[b] = float("nan")
        decode_only.value_cache[b] = float("nan")
    got = _run(decode_only, window=WINDOW, sinks=SINKS, scale=0.1, num_splits=2)
    want = decode_only.reference(window=WINDOW, sinks=SINKS, scale=0.1)
    torch.testing.assert_close(got, want, **TOL[torch.float16])


def test_bad_arguments_raise() -> None:
    case = _case([(1, 5)], num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16)
    with pytest.raises(ValueError, match="window must be"):
        _run(case, window=0, sinks=0, scale=1.0)
    with pytest.raises(ValueError, match="sinks must be"):
        _run(case, window=3, sinks=-1, scale=1.0)
    with pytest.raises(ValueError, match="dtype mismatch"):
        lt.paged_local_attention(
            case.query.float(), case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
            query_start_loc=case.query_start_loc, window=3, sinks=0, scale=1.0,
        )  # fmt: skip


def test_decode_skips_padded_requests_and_reads_strided_queries() -> None:
    """vLLM pads batches with empty requests and hands a query that is a view into the fused qkv tensor."""
    case = _case(
        [(1, 50), (1, 9)], num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16
    )
    qkv = torch.randn(2, 8, 64, dtype=torch.float16, device=DEVICE)
    qkv[:, :4] = case.query
    query = qkv[:, :4]  # strided rows, contiguous head dimension
    out = torch.full((3, 4, 64), 5.0, dtype=torch.float16, device=DEVICE)  # row 2: padding
    qsl = torch.tensor([0, 1, 2, 2], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor([50, 9, 0], dtype=torch.int32, device=DEVICE)
    table = torch.cat([case.block_table, torch.zeros_like(case.block_table[:1])])
    query3 = torch.cat([query, torch.zeros(1, 4, 64, dtype=torch.float16, device=DEVICE)])
    for splits in (1, 2):
        lt.paged_local_attention(
            query3, case.key_cache, case.value_cache, block_table=table, seq_lens=seq_lens,
            query_start_loc=qsl, window=8, sinks=2, scale=0.1, out=out, num_splits=splits,
        )  # fmt: skip
        torch.testing.assert_close(
            out[:2], case.reference(window=8, sinks=2, scale=0.1), **TOL[torch.float16]
        )
        assert bool((out[2] == 5.0).all())
    got = lt.paged_local_attention(
        query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
        query_start_loc=case.query_start_loc, window=8, sinks=2, scale=0.1,
    )  # fmt: skip
    torch.testing.assert_close(got, case.reference(window=8, sinks=2, scale=0.1), **TOL[torch.float16])
