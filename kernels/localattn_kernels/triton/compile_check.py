"""Compile the Triton kernels for an NVIDIA GPU on a machine without one, exactly as the launchers launch them.

`TRITON_INTERPRET=1` checks the kernels' arithmetic on CPU but skips the GPU compiler: layouts, `tl.dot`'s
shape rules, register allocation and shared memory are only decided by Triton's NVIDIA backend and ptxas (both
ship in the Triton wheel). Under :func:`compile_only`, a launch (``kernel[grid](...)``) compiles for the given
GPU architecture with the argument specialisations a real launch would make (dtypes, 16-byte alignment,
integers equal to 1) and returns instead of running; :func:`resource_usage` then reads the cubin's registers,
spill stack and shared memory with the bundled ``cuobjdump``.

    python -m localattn_kernels.triton.compile_check   # the table in docs/kernels.md
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from localattn_kernels.testing import TRITON_COVER_WITH_FP32
from localattn_kernels.triton.common import interpreting

#: Shared memory a block may use (bytes), by compute capability: sm_80 (A100) and sm_90 (H100/H200).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


@dataclass(frozen=True)
class Usage:
    name: str
    registers: int
    stack: int  # bytes of per-thread stack: register spills (and calls) live there
    local: int
    shared: int  # bytes: the larger of the cubin's static figure and Triton's dynamic allocation (Triton's kernels use one)
    num_warps: int
    num_stages: int
    dots: str  # what tl.dot became: "wgmma" (sm_90 warpgroup), "mma" (mma.sync), "fma" (no tensor cores), "none"
    async_copies: bool  # 16-byte global -> shared cp.async copies (K/V tiles stream in while the last one computes)


class _CompileOnlyDriver:
    """The part of Triton's driver interface a warm-up launch touches, answering for a GPU that is not there."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[list[Any]]:
    """Within the block, every Triton launch compiles for ``sm_{arch}`` and is recorded instead of run.

    Call the launchers with CPU tensors of the dtypes and strides a real call would have; their data is never
    read. Yields the list of compiled kernels (Triton ``CompiledKernel``), one per launch.
    """
    if interpreting():
        raise RuntimeError("compile_only needs Triton's compiler: unset TRITON_INTERPRET")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    compiled: list[Any] = []
    saved: dict[Any, Any] = {}  # kernel -> its real per-device caches, put back on exit
    run = JITFunction.run

    def warmup_run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if self not in saved:  # a kernel caches its binder *with the target* per device: give it a fresh one
            saved[self] = self.device_caches
            self.device_caches = defaultdict(self.create_binder)
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    previous = driver._active  # None until something asked; reset_active() would insist on a real GPU
    driver.set_active(_CompileOnlyDriver(arch))  # type: ignore[arg-type]
    JITFunction.run = warmup_run  # type: ignore[method-assign]
    try:
        yield compiled
    finally:
        JITFunction.run = run  # type: ignore[method-assign]
        driver.set_active(previous)  # type: ignore[arg-type]
        for fn, caches in saved.items():
            fn.device_caches = caches


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(kernel: Any) -> Usage:
    """Registers, spill stack and shared memory of a compiled kernel, from its cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", text))
    md = kernel.metadata
    ptx = kernel.asm["ptx"]
    has_dot = re.search(r"\btt\.dot\b|warp_group_dot", kernel.asm["ttgir"]) is not None
    dots = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "fma" if has_dot else "none"
    return Usage(name=md.name, registers=int(fields["REG"]), stack=int(fields["STACK"]), local=int(fields["LOCAL"]),
                 shared=max(int(fields["SHARED"]), int(md.shared)), num_warps=md.num_warps, num_stages=md.num_stages,
                 dots=dots, async_copies=re.search(r"cp\.async\.c[ag]\.shared\.global[^;\n]*, 0x10,", ptx) is not None)


def paged_inputs(*, num_heads: int, num_kv_heads: int, head_size: int, block_size: int, dtype: torch.dtype,
                 query_len: int, num_seqs: int = 2, blocks_per_seq: int = 4) -> dict[str, Any]:
    """CPU tensors shaped and strided like the runtime's (vLLM's GPU KV layout), for :func:`compile_only`."""
    from localattn_kernels import layout

    kv = torch.empty(layout.kv_cache_shape(num_seqs * blocks_per_seq, num_kv_heads, block_size, head_size),
                     dtype=dtype)
    key_cache, value_cache = layout.split_kv_cache_gpu(kv)
    tokens = num_seqs * query_len
    # vLLM hands the query as a view into the fused qkv projection: rows strided by (H + 2 Hkv) * D.
    qkv = torch.empty(tokens, (num_heads + 2 * num_kv_heads) * head_size, dtype=dtype)
    query = qkv[:, : num_heads * head_size].view(tokens, num_heads, head_size)
    return {
        "query": query, "key_cache": key_cache, "value_cache": value_cache,
        "out": torch.empty(tokens, num_heads, head_size, dtype=dtype),
        "block_table": torch.zeros(num_seqs, blocks_per_seq, dtype=torch.int32),
        "seq_lens": torch.full((num_seqs,), blocks_per_seq * block_size, dtype=torch.int32),
        "query_start_loc": torch.arange(0, tokens + 1, query_len, dtype=torch.int32),
    }  # fmt: skip


def compile_launches(arch: int, launch: Callable[[], object]) -> list[Usage]:
    """Compile what ``launch()`` launches for ``sm_{arch}`` and return each kernel's resource usage."""
    with compile_only(arch) as compiled:
        launch()
    return [resource_usage(k) for k in compiled]


def usage_table(archs: tuple[int, ...] = (80, 90)) -> list[dict[str, Any]]:
    """Resource usage of every launch path (decode, split decode + combine, prefill) over :data:`localattn_kernels.testing.TRITON_COVER_WITH_FP32`."""
    from localattn_kernels.triton.decode import decode
    from localattn_kernels.triton.prefill import prefill

    rows = []
    for arch in archs:
        for head_size, group, block_size, dtype in TRITON_COVER_WITH_FP32:
            dec = paged_inputs(num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=block_size,
                               dtype=dtype, query_len=1)  # fmt: skip
            pre = paged_inputs(num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=block_size,
                               dtype=dtype, query_len=48)  # fmt: skip
            paths: dict[str, Callable[[], object]] = {
                "decode": partial(decode, **dec, window=512, sinks=4, scale=0.1, num_splits=1),
                "decode-split": partial(decode, **dec, window=512, sinks=4, scale=0.1, num_splits=4),
                "prefill": partial(prefill, **pre, window=512, sinks=4, scale=0.1),
            }
            for path, launch in paths.items():
                for u in compile_launches(arch, launch):
                    rows.append({"arch": f"sm_{arch}", "path": path, "kernel": u.name.lstrip("_"),
                                 "head_size": head_size, "group": group, "block_size": block_size,
                                 "dtype": str(dtype).removeprefix("torch."), "registers": u.registers,
                                 "spill_stack": u.stack, "local": u.local, "shared": u.shared,
                                 "shared_limit": SHARED_LIMIT[arch], "warps": u.num_warps, "stages": u.num_stages,
                                 "dots": u.dots, "cp_async": u.async_copies})  # fmt: skip
    return rows


def main() -> int:
    import triton

    rows = usage_table()
    print(f"triton {triton.__version__}; registers / spill stack bytes / shared bytes per kernel")
    cols = ["arch", "path", "kernel", "head_size", "group", "block_size", "dtype", "registers", "spill_stack",
            "shared", "warps", "stages", "dots", "cp_async"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    bad = [r for r in rows if r["spill_stack"] or r["local"] or r["shared"] > r["shared_limit"]]
    print(f"{len(rows)} kernels compiled; {len(bad)} spill or exceed shared memory")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
