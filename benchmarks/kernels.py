"""Attention on CPU vs context length: our sink + window path against vLLM's own kernels, side by side.

Decode (one query per sequence) and prefill (a whole prompt of ``context`` tokens, the runtime benchmark's tiny
model shape by default). All methods of a table read the same paged cache (vLLM's CPU layout, shuffled block
table) in the same process, timed round-robin: each round runs every method once, in an order that rotates
from round to round, so a busy machine hurts every column alike. Before every timed call the caches are
flushed (a buffer of several times the L3 size is rewritten): in a model every layer reads its own KV cache, so
a layer's K/V is not in L3 when its attention runs; timing back-to-back calls on one cache instead would leave
the local method's ~2 MiB working set in L3 while full attention streams from DRAM (the figures before
2026-12-01 were measured that way). Reports the min over rounds, and beside each time ratio the ratio of K/V
bytes the two methods must read (blocks touched x block bytes): on a memory-bound kernel the two should be close.
Prints tables with ratios and writes ``benchmarks/results/kernels_cpu.csv`` / ``.png`` (decode) and
``kernels_cpu_prefill.csv``. About 2 min with the defaults (more with large contexts: each flush costs ~10 ms).

    .venv/bin/python benchmarks/kernels.py [--contexts 1024 4096 16384 65536] [--prefill-contexts 4096 16384]
        [--window 512] [--sinks 4] [--threads 1] [--no-flush] [--isa vec|amx]

``--isa amx`` (bf16 on Intel CPUs with AMX, where vLLM tiles its cache for AMX): every method reads the
AMX-layout cache, vLLM's kernels with their AMX code, ours through the per-step copy of the needed blocks into
vec order (``native``, which includes the copy) or the torch fallback; results go to ``*-amx.csv`` / ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from localattn_kernels import cpu, cpu_native, layout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serviceproxy import commit, cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("local", "vllm_full", "vllm_swa", "sdpa_dense")
PREFILL_METHODS = ("native", "torch", "vllm_full", "vllm_swa")


def l3_bytes() -> int:
    """The last-level cache size (Linux sysfs), or 32 MiB when it cannot be read."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text.rstrip("KkMm")) * (1024 if text[-1] in "Kk" else 1024 * 1024 if text[-1] in "Mm" else 1)
    except (OSError, ValueError, IndexError):
        return 32 << 20


class Flusher:
    """Evicts the caches: rewrites a buffer of `factor` x L3 (int64 adds, every cache line touched)."""

    def __init__(self, enabled: bool, factor: int = 4) -> None:
        self.buf = torch.zeros(factor * l3_bytes() // 8, dtype=torch.int64) if enabled else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.add_(1)


def round_robin(calls: dict[str, Callable[[], object]], budget_s: float, flush: Flusher, min_rounds: int = 3,
                max_rounds: int = 200) -> dict[str, list[float]]:
    """Time every call once per round (rotating the order), flushing before each; stop after `budget_s` of
    timed calls per method on average (flushes not counted) or `max_rounds`."""
    names = list(calls)
    for name in names:  # warm-up: first-call costs (allocations, lazy init) out of the timings
        calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    spent = 0.0
    for r in range(max_rounds):
        if r >= min_rounds and spent / len(names) >= budget_s:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            flush()
            t = time.perf_counter()
            calls[name]()
            dt = time.perf_counter() - t
            times[name].append(dt)
            spent += dt
    return times


def decode_bytes(context: int, args: argparse.Namespace) -> dict[str, float]:
    """K/V bytes one decode call must read per method (whole blocks, as the kernels read them)."""
    bs = args.block_size
    block = 2 * bs * args.kv_heads * args.head_size * 2  # K and V, bf16
    blocks_full = math.ceil(context / bs)
    last = context - 1
    ns = layout.num_sink_blocks(args.sinks, bs)
    first_win = max(max(last - args.window + 1, 0) // bs, ns)
    blocks_local = min(ns, last // bs + 1) + max(last // bs - first_win + 1, 0)
    blocks_swa = last // bs - max(last - args.window + 1, 0) // bs + 1
    dense = context * args.kv_heads * args.head_size * 2 * 2
    return {"local": blocks_local * block * args.batch, "vllm_full": blocks_full * block * args.batch,
            "vllm_swa": blocks_swa * block * args.batch, "sdpa_dense": dense * args.batch}


def build(context: int, args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    """The four decode calls over one cache holding ``batch`` sequences of ``context`` tokens."""
    from vllm import _custom_ops as ops

    gen = torch.Generator().manual_seed(context)
    dtype, bs, hkv, hq, d, batch = (
        torch.bfloat16,
        args.block_size,
        args.kv_heads,
        args.heads,
        args.head_size,
        args.batch,
    )
    per_seq = math.ceil(context / bs)
    kv = torch.randn(layout.kv_cache_shape(per_seq * batch, hkv, bs, d), generator=gen).to(dtype)
    key_cache, value_cache = layout.split_kv_cache(kv)
    block_table = torch.randperm(per_seq * batch, generator=gen).view(batch, per_seq).to(torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32)
    qsl = torch.arange(batch + 1, dtype=torch.int32)
    query = torch.randn(batch, hq, d, generator=gen).to(dtype)
    out = torch.empty_like(query)
    scale = d**-0.5
    isa = args.isa

    def vllm(window: int) -> Callable[[], object]:
        meta = ops.cpu_attn_get_scheduler_metadata(
            batch, hq, hkv, d, seq_lens, dtype, qsl, True, window, isa, False
        )
        return lambda: ops.cpu_attention_with_kv_cache(
            query,
            key_cache,
            value_cache,
            out,
            qsl,
            seq_lens,
            scale,
            True,
            None,
            window,
            block_table,
            0.0,
            meta,
            None,
        )

    # Dense copy of the same keys/values, [batch, Hkv, context, D], for the SDPA baseline (for a packed layout
    # the elements of each block in storage order: the same bytes, which is all a timing needs).
    if isa in layout.PACKED_ISAS:
        kt = key_cache[block_table.long()].transpose(-1, -2)
    else:
        kt = layout.key_block_view(key_cache, isa)[block_table.long()]  # [B, n, H, D, bs]
    dense_k = kt.permute(0, 2, 1, 4, 3).reshape(batch, hkv, per_seq * bs, d)[:, :, :context].contiguous()
    dense_v = value_cache[block_table.long()].permute(0, 2, 1, 3, 4).reshape(batch, hkv, per_seq * bs, d)
    dense_v = dense_v[:, :, :context].contiguous()
    q4 = query.view(batch, hq, 1, d)

    def local() -> object:
        return cpu.paged_local_attention(
            query, key_cache, value_cache, block_table=block_table, seq_lens=seq_lens, query_start_loc=qsl,
            window=args.window, sinks=args.sinks, scale=scale, out=out, isa=isa,
        )  # fmt: skip

    return {
        "local": local,
        "vllm_full": vllm(-1),
        "vllm_swa": vllm(args.window),
        "sdpa_dense": lambda: F.scaled_dot_product_attention(
            q4, dense_k, dense_v, scale=scale, enable_gqa=True
        ),
    }


def build_prefill(context: int, args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    """The four prefill calls (one request, ``context`` queries at positions ``0..context-1``) over one cache."""
    from vllm import _custom_ops as ops

    gen = torch.Generator().manual_seed(context + 1)
    dtype, bs = torch.bfloat16, args.block_size
    hq, hkv, d = args.prefill_heads, args.prefill_kv_heads, args.prefill_head_size
    blocks = math.ceil(context / bs)
    kv = torch.randn(layout.kv_cache_shape(blocks, hkv, bs, d), generator=gen).to(dtype)
    key_cache, value_cache = layout.split_kv_cache(kv)
    block_table = torch.randperm(blocks, generator=gen).view(1, blocks).to(torch.int32)
    seq_lens = torch.tensor([context], dtype=torch.int32)
    qsl = torch.tensor([0, context], dtype=torch.int32)
    query = torch.randn(context, hq, d, generator=gen).to(dtype)
    out = torch.empty_like(query)
    scale = d**-0.5

    def vllm(window: int) -> Callable[[], object]:
        meta = ops.cpu_attn_get_scheduler_metadata(
            1, hq, hkv, d, seq_lens, dtype, qsl, True, window, args.isa, False
        )
        return lambda: ops.cpu_attention_with_kv_cache(
            query, key_cache, value_cache, out, qsl, seq_lens, scale, True, None, window, block_table, 0.0, meta,
            None,
        )  # fmt: skip

    def local() -> object:
        return cpu.paged_local_attention(
            query, key_cache, value_cache, block_table=block_table, seq_lens=seq_lens, query_start_loc=qsl,
            window=args.window, sinks=args.sinks, scale=scale, out=out, isa=args.isa,
        )  # fmt: skip

    def torch_tiles() -> object:
        with mock.patch.object(cpu_native, "supports", return_value=False):
            return local()

    if not cpu_native.available():
        raise SystemExit("the fused CPU kernels did not build (no C compiler?): nothing to compare")
    return {"native": local, "torch": torch_tiles, "vllm_full": vllm(-1), "vllm_swa": vllm(args.window)}


def _table(cols: list[str], rows: list[list[object]]) -> None:
    print("  ".join(f"{c:>13}" for c in cols))
    for vals in rows:
        print("  ".join(f"{v:>13.3f}" if isinstance(v, float) else f"{v:>13}" for v in vals))


def _prefill(args: argparse.Namespace, machine: str, flush: Flusher) -> list[dict[str, float]]:
    rows = []
    for context in args.prefill_contexts:
        calls = build_prefill(context, args)
        times = round_robin({m: calls[m] for m in PREFILL_METHODS}, args.budget, flush, min_rounds=2)
        rows.append(
            {"context": context, **{f"{m}_ms": round(min(times[m]) * 1e3, 2) for m in PREFILL_METHODS}}
        )
        del calls
    print(
        f"prefill of one {args.prefill_heads} heads / {args.prefill_kv_heads} KV heads, d={args.prefill_head_size} "
        f"prompt, bf16, block {args.block_size}, W={args.window}, S={args.sinks}, {torch.get_num_threads()} "
        f"threads, {machine}; per layer, min over round-robin rounds, {flush_note(flush)}"
    )
    _table(
        ["context", "native ms", "torch ms", "vLLM full ms", "vLLM SWA ms", "full/native", "torch/native",
         "native/SWA"],
        [
            [r["context"], r["native_ms"], r["torch_ms"], r["vllm_full_ms"], r["vllm_swa_ms"],
             r["vllm_full_ms"] / r["native_ms"], r["torch_ms"] / r["native_ms"], r["native_ms"] / r["vllm_swa_ms"]]
            for r in rows
        ],
    )  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prefill-contexts", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--prefill-heads", type=int, default=8)
    parser.add_argument("--prefill-kv-heads", type=int, default=2)
    parser.add_argument("--prefill-head-size", type=int, default=32)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timing per method and context")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch/OpenMP threads (default 1: on a shared machine a parallel region stalls whenever another "
        "process holds a core, which swamps sub-millisecond kernels)",
    )  # fmt: skip
    parser.add_argument("--no-flush", action="store_true",
                        help="do not flush the caches before each timed call (warm-cache figures, as before)")
    parser.add_argument("--isa", choices=("vec", "amx"), default="vec",
                        help="the cache layout vLLM's CPU backend uses (amx: bf16 on CPUs with AMX tiles)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.isa == "amx" and not torch.cpu._is_amx_tile_supported():
        raise SystemExit("--isa amx: this CPU has no AMX tiles (vLLM would use the vec layout here)")
    if args.isa == "amx":
        torch.cpu._init_amx()  # Linux grants AMX tile state per process on request; vLLM's workers ask too
    torch.set_num_threads(args.threads)
    flush = Flusher(not args.no_flush)

    machine = f"{cpu_model()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, isa {args.isa}"
    suffix = "" if args.isa == "vec" else f"-{args.isa}"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.contexts:
        _decode(args, machine, flush, suffix)
    if args.prefill_contexts:
        rows = _prefill(args, machine, flush)
        _write_csv(rows, args.out / f"kernels_cpu_prefill{suffix}.csv")
        print(f"wrote {args.out / f'kernels_cpu_prefill{suffix}.csv'}")
    return 0


def _write_csv(rows: list[dict[str, float]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def flush_note(flush: Flusher) -> str:
    return (f"caches flushed before each call ({flush.buf.numel() * 8 >> 20} MiB rewritten)" if flush.buf is not None
            else "warm caches (--no-flush)")


def _decode(args: argparse.Namespace, machine: str, flush: Flusher, suffix: str) -> None:
    rows = []
    for context in args.contexts:
        calls = build(context, args)
        times = round_robin({m: calls[m] for m in METHODS}, args.budget, flush)
        best = {m: min(t) * 1e3 for m, t in times.items()}
        nbytes = decode_bytes(context, args)
        rows.append({"context": context, **{f"{m}_ms": round(best[m], 4) for m in METHODS},
                     **{f"{m}_mib": round(nbytes[m] / 2**20, 3) for m in METHODS}})
        del calls
    header = (
        f"decode, batch {args.batch}, {args.heads} heads / {args.kv_heads} KV heads, d={args.head_size}, bf16, "
        f"block {args.block_size}, W={args.window}, S={args.sinks}, {torch.get_num_threads()} threads, "
        f"{machine}; min over round-robin rounds, {flush_note(flush)}"
    )
    print(header)
    _table(
        ["context", "local ms", "vLLM full ms", "vLLM SWA ms", "SDPA dense ms", "full/local", "bytes f/l",
         "local/SWA", "bytes l/S", "SDPA/local"],
        [
            [r["context"], r["local_ms"], r["vllm_full_ms"], r["vllm_swa_ms"], r["sdpa_dense_ms"],
             r["vllm_full_ms"] / r["local_ms"], r["vllm_full_mib"] / r["local_mib"],
             r["local_ms"] / r["vllm_swa_ms"], r["local_mib"] / r["vllm_swa_mib"], r["sdpa_dense_ms"] / r["local_ms"]]
            for r in rows
        ],
    )  # fmt: skip
    _write_csv(rows, args.out / f"kernels_cpu{suffix}.csv")
    _plot(rows, header, args.out / f"kernels_cpu{suffix}.png")
    print(f"wrote {args.out / f'kernels_cpu{suffix}.csv'} and {args.out / f'kernels_cpu{suffix}.png'}")


def _plot(rows: list[dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    labels = {
        "local": "localattn CPU (sinks + window)",
        "vllm_full": "vLLM CPU kernel, full",
        "vllm_swa": "vLLM CPU kernel, sliding window",
        "sdpa_dense": "torch SDPA, dense cache",
    }
    ctx = [r["context"] for r in rows]
    for m in METHODS:
        ax.plot(ctx, [r[f"{m}_ms"] for r in rows], marker="o", label=labels[m])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode attention time per layer (ms)")
    ax.set_title(title, fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
