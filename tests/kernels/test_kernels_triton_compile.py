"""The Triton kernels through the real NVIDIA compiler (Triton's backend + ptxas), on a machine without a GPU.

The interpreter tests (`test_kernels_triton.py`) check the arithmetic; these check what only the GPU compiler
decides, for the exact launches the launchers make: every path compiles for sm_80 and sm_90, uses no spill
stack and fits in shared memory, streams K/V through cp.async; 16-bit dots run on tensor cores (wgmma for
prefill on sm_90) and fp32 dots in IEEE precision (not TF32).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localattn_kernels.testing import TRITON_COVER_WITH_FP32
from localattn_kernels.triton import compile_check


@pytest.fixture(autouse=True)
def _compiler_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("arch", [80, 90])
def test_every_launch_compiles_without_spills_and_fits_shared_memory(arch: int) -> None:
    rows = compile_check.usage_table((arch,))
    # decode: 1 kernel, split decode: 2 (+ the LSE combine), prefill: 1 — for every covered shape.
    assert len(rows) == 4 * len(TRITON_COVER_WITH_FP32)
    for row in rows:
        assert row["spill_stack"] == 0 and row["local"] == 0, row
        assert row["shared"] <= row["shared_limit"], row
        assert row["registers"] <= 255, row
        if row["kernel"] == "combine_kernel":  # the LSE combine reads a few floats: no dots, no tiles to stream
            assert row["dots"] == "none" and not row["cp_async"], row
        else:
            assert row["cp_async"], row  # 16-byte cp.async: K/V tiles stream in while the previous tile computes
            want = "fma" if row["dtype"] == "float32" else "wgmma" if (arch, row["path"]) == (90, "prefill") else "mma"
            assert row["dots"] == want, row


def test_the_check_sees_spills() -> None:
    """fp32 with the 16-bit tiles (64 x 32) spills on sm_90: the reason fp32 has its own (`common.tile_sizes`)."""
    from localattn_kernels.triton.prefill import prefill

    args = compile_check.paged_inputs(num_heads=8, num_kv_heads=2, head_size=128, block_size=16,
                                      dtype=torch.float32, query_len=48)  # fmt: skip
    (usage,) = compile_check.compile_launches(90, lambda: prefill(**args, window=64, sinks=4, scale=0.1,
                                                                  block_m=64, block_n=32))  # fmt: skip
    assert usage.stack > 0


@pytest.mark.parametrize(("dtype", "tensor_cores"), [(torch.bfloat16, True), (torch.float16, True),
                                                      (torch.float32, False)])  # fmt: skip
def test_dot_precision(dtype: torch.dtype, tensor_cores: bool) -> None:
    from localattn_kernels.triton.decode import decode

    args = compile_check.paged_inputs(num_heads=8, num_kv_heads=2, head_size=64, block_size=16, dtype=dtype,
                                      query_len=1)  # fmt: skip
    with compile_check.compile_only(90) as compiled:
        decode(**args, window=64, sinks=4, scale=0.1, num_splits=1)
    usage = compile_check.resource_usage(compiled[0])
    assert (usage.dots == "mma") == tensor_cores and usage.async_copies  # K/V tiles stream through cp.async
    assert usage.dots in ("mma", "fma")
    assert "tf32" not in compiled[0].asm["ptx"]


@pytest.mark.parametrize("head_size", [8, 80, 256])
def test_head_sizes_outside_the_cover_compile(head_size: int) -> None:
    """Head sizes below 16 need the tile padded to tl.dot's minimum; non-powers of two are masked."""
    from localattn_kernels.triton.decode import decode
    from localattn_kernels.triton.prefill import prefill

    shape = {"num_heads": 8, "num_kv_heads": 2, "head_size": head_size, "block_size": 16, "dtype": torch.bfloat16}
    dec = compile_check.paged_inputs(query_len=1, **shape)  # type: ignore[arg-type]
    pre = compile_check.paged_inputs(query_len=48, **shape)  # type: ignore[arg-type]
    for launch in (lambda: decode(**dec, window=64, sinks=4, scale=0.1, num_splits=2),
                   lambda: prefill(**pre, window=64, sinks=4, scale=0.1)):  # fmt: skip
        for usage in compile_check.compile_launches(90, launch):
            assert usage.stack == 0 and usage.shared <= compile_check.SHARED_LIMIT[90], usage


def test_each_compile_targets_its_own_architecture() -> None:
    """Triton caches a kernel's binder per device together with the target: compile_only must not reuse one."""
    from localattn_kernels.triton.prefill import prefill

    args = compile_check.paged_inputs(num_heads=8, num_kv_heads=2, head_size=64, block_size=16,
                                      dtype=torch.bfloat16, query_len=48)  # fmt: skip
    dots = [compile_check.compile_launches(arch, lambda: prefill(**args, window=64, sinks=4, scale=0.1))[0].dots
            for arch in (90, 80, 90)]  # fmt: skip
    assert dots == ["wgmma", "mma", "wgmma"]


def test_one_compiled_kernel_serves_every_rule() -> None:
    """window, sinks and full_below are not specialised: changing them (including to 1 or a multiple of 16, which
    Triton would otherwise specialise on) reuses the compiled kernel instead of compiling another."""
    from localattn_kernels.triton.decode import decode
    from localattn_kernels.triton.prefill import prefill

    shape = {"num_heads": 8, "num_kv_heads": 2, "head_size": 64, "block_size": 16, "dtype": torch.bfloat16}
    dec = compile_check.paged_inputs(query_len=1, **shape)  # type: ignore[arg-type]
    pre = compile_check.paged_inputs(query_len=48, **shape)  # type: ignore[arg-type]
    with compile_check.compile_only(90) as compiled:
        for window, sinks, full_below in ((512, 4, 0), (1, 1, 1), (100, 0, 333)):
            decode(**dec, window=window, sinks=sinks, scale=0.1, num_splits=1, full_below=full_below)
            prefill(**pre, window=window, sinks=sinks, scale=0.1, full_below=full_below)
    assert len(compiled) == 6 and len({k.hash for k in compiled}) == 2
