"""The CPU paged path against the reference, on vLLM's CPU cache layout."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from localattn_kernels import cpu, cpu_native, layout
from localattn_kernels.testing import PagedCase, make_case

from .cases import DECODE, MIXED, PREFILL, SINKS, TOL, WINDOW


def _run(case: PagedCase, *, window: int, sinks: int, scale: float, **kw: object) -> torch.Tensor:
    return cpu.paged_local_attention(
        case.query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
        query_start_loc=case.query_start_loc, window=window, sinks=sinks, scale=scale, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _count_native_prefill(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the fused prefill kernel (so a test knows which path it exercised)."""
    calls: list[int] = []
    real = cpu_native.prefill

    def spy(*args: object, **kwargs: object) -> None:
        calls.append(1)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_native, "prefill", spy)
    return calls


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_size", [64, 128])
def test_mixed_batch_matches_reference(
    head_size: int,
    group: int,
    block_size: int,
    dtype: torch.dtype,
    native: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both CPU paths (fused C kernels when supported, else torch) over decode, prefill and chunked prefill."""
    if not native:
        monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    calls = _count_native_prefill(monkeypatch)
    case = make_case(
        MIXED + PREFILL, num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=block_size,
        dtype=dtype,
    )  # fmt: skip
    for window, sinks in ((WINDOW, SINKS), (WINDOW, 0), (1, 2), (10**6, SINKS)):
        want = case.reference(window=window, sinks=sinks, scale=head_size**-0.5)
        got = _run(case, window=window, sinks=sinks, scale=head_size**-0.5)
        torch.testing.assert_close(got, want, **TOL[dtype])
    assert bool(calls) == (native and block_size != 16 and cpu_native.available())


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_long_prefill_spans_several_query_tiles(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    requests = [(cpu.PREFILL_TILE * 2 + 7, cpu.PREFILL_TILE * 2 + 50), (1, 9)]
    case = make_case(requests, num_heads=4, num_kv_heads=1, head_size=64, block_size=32, dtype=torch.float32)
    torch.testing.assert_close(
        _run(case, window=100, sinks=4, scale=0.1),
        case.reference(window=100, sinks=4, scale=0.1),
        atol=1e-4,
        rtol=1e-4,
    )


def test_window_covering_everything_is_full_causal_attention() -> None:
    requests = [(50, 50), (1, 77)]
    case = make_case(requests, num_heads=8, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.float32)
    got = _run(case, window=77, sinks=2, scale=0.125)
    q, k, v = case.query[:50], case.keys[:50], case.values[:50]
    want = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True, scale=0.125
    ).transpose(0, 1)
    torch.testing.assert_close(got[:50], want, atol=1e-5, rtol=1e-5)
    full = case.reference(window=10**6, sinks=0, scale=0.125)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_reads_only_sink_and_window_blocks() -> None:
    """Poison every block a request does not need: the output must not change (nothing else was read)."""
    requests = [(1, 300), (1, 130), (16, 200)]
    case = make_case(requests, num_heads=4, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.float32)
    want = _run(case, window=WINDOW, sinks=SINKS, scale=0.1)
    keep: set[int] = set()
    for r, (q_len, seq_len) in enumerate(requests):
        for b in layout.needed_blocks(seq_len, window=WINDOW, sinks=SINKS, block_size=32, q_len=q_len):
            keep.add(int(case.block_table[r, b]))
    poison = torch.tensor([b for b in range(case.key_cache.shape[0]) if b not in keep])
    case.key_cache[poison] = float("nan")
    case.value_cache[poison] = float("nan")
    torch.testing.assert_close(_run(case, window=WINDOW, sinks=SINKS, scale=0.1), want)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize(("block_size", "group", "head_size"), [(32, 4, 64), (128, 1, 128), (64, 8, 64)])
def test_amx_packed_layout_written_by_vllm(native: bool, block_size: int, group: int, head_size: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's AMX-tiled cache (bf16 on Intel CPUs with AMX), written by vLLM's own writer: the torch path
    permutes gathered blocks; the C kernels read a per-step copy of the needed blocks in vec order."""
    pytest.importorskip("vllm")
    if not native:
        monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    calls = _count_native_prefill(monkeypatch)
    case = make_case([*MIXED, *PREFILL], num_heads=2 * group, num_kv_heads=2, head_size=head_size,
                     block_size=block_size, dtype=torch.bfloat16, isa="amx")
    for window, sinks in ((WINDOW, SINKS), (1, 2), (WINDOW, 0)):
        got = _run(case, window=window, sinks=sinks, scale=head_size**-0.5, isa="amx")
        want = case.reference(window=window, sinks=sinks, scale=head_size**-0.5)
        torch.testing.assert_close(got, want, **TOL[torch.bfloat16])
    assert bool(calls) == (native and cpu_native.available())


@pytest.mark.parametrize("tiles", [True, False], ids=["tile-views", "permutation"])
def test_amx_copy_holds_only_the_needed_blocks_in_vec_order(tiles: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repacked copy is exactly the sink + window blocks of each request, in order, each holding the
    request's own keys and values (the case's plain tensors) in vec order (K^T per block, V plain), by the
    tile reshapes and by the generic permutation alike."""
    pytest.importorskip("vllm")
    assert cpu._amx_tiles_match("amx", torch.bfloat16, 32, 64)  # vLLM 0.32's tiling is the one the views read
    if not tiles:
        monkeypatch.setattr(cpu, "_amx_tiles_match", lambda *a: False)
    requests = [(1, 300), (16, 200), (1, 3)]
    bs = 32
    case = make_case(requests, num_heads=4, num_kv_heads=2, head_size=64, block_size=bs, dtype=torch.bfloat16,
                     isa="amx")
    plan = cpu.plan_step(case.block_table, case.seq_lens, case.query_start_loc, block_size=bs,
                         num_tokens=case.query.shape[0], repack=(WINDOW, SINKS))
    needed = [(r, b) for r, (q_len, seq_len) in enumerate(requests)
              for b in layout.needed_blocks(seq_len, window=WINDOW, sinks=SINKS, block_size=bs, q_len=q_len)]
    assert plan.repack_blocks is not None
    assert plan.repack_blocks.tolist() == [int(case.block_table[r, b]) for r, b in needed]
    key, value = cpu.repack_blocks(case.key_cache, plan.repack_blocks, "amx")
    kt = layout.key_block_view(key, "vec")  # [P, H, D, bs]
    for j, (r, b) in enumerate(needed):
        n = min(bs, requests[r][1] - b * bs)  # tokens written in this block
        first = int(case.cu_seqlens_k[r]) + b * bs
        assert torch.equal(kt[j, :, :, :n].permute(2, 0, 1), case.keys[first : first + n])
        assert torch.equal(value[j, :, :n].transpose(0, 1), case.values[first : first + n])
    with pytest.raises(ValueError, match=r"repack=\(40, 4\)"):
        cpu.planned_local_attention(case.query, case.key_cache, case.value_cache, plan, window=WINDOW, sinks=0,
                                    scale=0.1, isa="amx", native=True)


def test_writes_into_out_and_leaves_padding_rows() -> None:
    case = make_case(
        [(1, 50), (4, 20)], num_heads=4, num_kv_heads=4, head_size=64, block_size=32, dtype=torch.float32
    )
    out = torch.full((case.query.shape[0] + 3, 4 * 64), 7.0)  # vLLM pads the token dim; [T, H*D] view
    query = torch.cat([case.query, torch.zeros(3, 4, 64)])
    got = cpu.paged_local_attention(
        query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
        query_start_loc=case.query_start_loc, window=8, sinks=1, scale=0.1, out=out,
    )  # fmt: skip
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got[:5], case.reference(window=8, sinks=1, scale=0.1), atol=1e-5, rtol=1e-5)
    assert bool((out[5:] == 7.0).all())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": 0}, "window must be"),
        ({"sinks": -2}, "sinks must be"),
        ({"query": torch.randn(2, 3, 64)}, "num_heads"),
        ({"query": torch.randn(2, 4, 32)}, "head_size mismatch"),
        ({"query": torch.randn(2, 4, 64).bfloat16()}, "dtype mismatch"),
        ({"query": torch.randn(2, 4, 64).int()}, "not supported"),
        ({"seq_lens": torch.tensor([5], dtype=torch.int32)}, "batch mismatch"),
        ({"seq_lens": torch.tensor([5, 1000], dtype=torch.int32)}, "more blocks"),
        ({"query_start_loc": torch.tensor([0, 1, 9], dtype=torch.int32)}, "query length"),
        ({"isa": "neon"}, "isa must be"),
        ({"out": torch.empty(2, 4, 64).half()}, "out must match"),
    ],
)
def test_bad_arguments_raise(change: dict, message: str) -> None:
    case = make_case(
        [(1, 5), (1, 6)], num_heads=4, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.float32
    )
    args = {
        "query": case.query, "block_table": case.block_table, "seq_lens": case.seq_lens,
        "query_start_loc": case.query_start_loc, "window": 4, "sinks": 1, "scale": 1.0,
    }  # fmt: skip
    args.update(change)
    query = args.pop("query")
    with pytest.raises(ValueError, match=message):
        cpu.paged_local_attention(query, case.key_cache, case.value_cache, **args)


def test_fused_decode_kernel_builds_and_agrees_with_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode rows use the fused C kernel when a compiler exists; the torch fallback must give the same answer."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert cpu_native.available(), "a C compiler is present but the fused decode kernel did not build"
    case = make_case(DECODE, num_heads=16, num_kv_heads=2, head_size=128, block_size=64, dtype=torch.bfloat16)
    assert cpu_native.supports(case.query, case.key_cache, case.value_cache, "vec") == cpu_native.available()
    fused = _run(case, window=WINDOW, sinks=SINKS, scale=0.09)
    monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    torch_path = _run(case, window=WINDOW, sinks=SINKS, scale=0.09)
    torch.testing.assert_close(fused, torch_path, **TOL[torch.bfloat16])
    torch.testing.assert_close(
        fused, case.reference(window=WINDOW, sinks=SINKS, scale=0.09), **TOL[torch.bfloat16]
    )


def test_fused_prefill_kernel_builds_and_agrees_with_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill rows use the fused C kernel when a compiler exists; every task size gives the torch answer."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert cpu_native.available(), "a C compiler is present but the fused prefill kernel did not build"
    else:
        pytest.skip("no C compiler: only the torch path exists here (covered by the other tests)")
    case = make_case(PREFILL, num_heads=12, num_kv_heads=4, head_size=64, block_size=32, dtype=torch.bfloat16)
    monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    torch_path = _run(case, window=WINDOW, sinks=SINKS, scale=0.11)
    monkeypatch.undo()
    calls = _count_native_prefill(monkeypatch)
    fused = _run(case, window=WINDOW, sinks=SINKS, scale=0.11)
    assert calls, "prefill rows did not go to the fused kernel"
    torch.testing.assert_close(fused, torch_path, **TOL[torch.bfloat16])
    qsl = case.query_start_loc
    starts = qsl.tolist()
    prefill_rows = [
        i for r, (q_len, _) in enumerate(PREFILL) if q_len > 1 for i in range(starts[r], starts[r + 1])
    ]
    for per_task in (1, 2, 5):  # group 3: 3, 6 and 15 rows per task, and the default (5 positions)
        out = torch.full_like(case.query, float("nan"))
        cpu_native.prefill(
            case.query, case.key_cache, case.value_cache, out, case.block_table, case.seq_lens, qsl[:-1],
            qsl[1:] - qsl[:-1], window=WINDOW, sinks=SINKS, scale=0.11, positions_per_task=per_task,
        )  # fmt: skip
        torch.testing.assert_close(out[prefill_rows], fused[prefill_rows], **TOL[torch.bfloat16])
    assert cpu_native.prefill_positions_per_task(3) == 5
    with pytest.raises(ValueError, match="positions_per_task"):
        cpu_native.prefill(
            case.query, case.key_cache, case.value_cache, out, case.block_table, case.seq_lens, qsl[:-1],
            qsl[1:] - qsl[:-1], window=WINDOW, sinks=SINKS, scale=0.11, positions_per_task=6,
        )  # fmt: skip


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_prefill_reads_only_sink_and_window_tokens(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poison every cached token outside sinks + the windows of a prefill chunk (even inside the blocks that are
    read): the output must not change, so neither path reads whole sink blocks or keys past the last query."""
    if not native:
        monkeypatch.setattr(cpu_native, "supports", lambda *a: False)
    requests = [(70, 300), (45, 45)]
    case = make_case(requests, num_heads=8, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.float32)
    want = _run(case, window=WINDOW, sinks=SINKS, scale=0.1)
    for r, (q_len, seq_len) in enumerate(requests):
        lo = max(seq_len - q_len - WINDOW + 1, 0)
        bad = [t for t in range(case.block_table.shape[1] * 32) if SINKS <= t < lo or t >= seq_len]
        slots = torch.tensor([int(case.block_table[r, t // 32]) * 32 + t % 32 for t in bad])
        nan = torch.full((len(bad), 2, 64), float("nan"))
        layout.write_kv(case.key_cache, case.value_cache, nan, nan, slots)
    torch.testing.assert_close(_run(case, window=WINDOW, sinks=SINKS, scale=0.1), want)


def test_strided_query_view_and_empty_padded_request() -> None:
    """vLLM's query is a view into the fused qkv projection, and batches may end with an empty request."""
    case = make_case(
        [(1, 70), (6, 40)], num_heads=8, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.bfloat16
    )
    qkv = torch.randn(7, 12, 64).bfloat16()
    qkv[:, :8] = case.query
    table = torch.cat([case.block_table, torch.zeros_like(case.block_table[:1])])
    got = cpu.paged_local_attention(
        qkv[:, :8], case.key_cache, case.value_cache, block_table=table,
        seq_lens=torch.tensor([70, 40, 0], dtype=torch.int32),
        query_start_loc=torch.tensor([0, 1, 7, 7], dtype=torch.int32), window=16, sinks=3, scale=0.125,
    )  # fmt: skip
    torch.testing.assert_close(got, case.reference(window=16, sinks=3, scale=0.125), **TOL[torch.bfloat16])


def test_vec16_layout_for_head_size_80() -> None:
    """Head sizes that are not a multiple of 32 make vLLM pick the "vec16" ISA (same transposed-K layout)."""
    case = make_case(
        [*DECODE, (9, 60)],
        num_heads=4,
        num_kv_heads=2,
        head_size=80,
        block_size=32,
        dtype=torch.float32,
        isa="vec16",
    )
    got = _run(case, window=WINDOW, sinks=SINKS, scale=0.1, isa="vec16")
    torch.testing.assert_close(
        got, case.reference(window=WINDOW, sinks=SINKS, scale=0.1), **TOL[torch.float32]
    )
