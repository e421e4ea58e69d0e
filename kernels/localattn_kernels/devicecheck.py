"""GPU check of the Triton kernels, run by ``benchmarks/device_check.sh``: correctness, then speed and bandwidth.

1. Correctness: every Triton path against the reference (fp32 on the device) over head sizes 64/128, GQA 1/4/8,
   block sizes 16/32/128, fp16/bf16, mixed batches crossing the sink/window bounds, split-KV decode.
2. Timings (``triton.testing.do_bench``, L2 flushed between runs): decode and prefill of our kernels with
   (W, S) vs the same kernels with W >= context (= full attention on the same cache), vs vLLM's FlashAttention
   and Triton unified attention with full attention and with their sliding window (no sinks), where importable.
3. Bandwidth: bytes a decode must read (sinks + window K/V of every sequence) / time, as a fraction of the
   device's peak HBM bandwidth (spec table by device name, else a measured device-to-device copy).

Writes ``kernels_gpu.json`` and ``kernels_gpu.md`` (the section for docs/benchmarks.md) into the output
directory. Stops starting new sections after ``--budget`` seconds so the whole run fits in 5 minutes.
``--dry-run`` does the same on CPU under ``TRITON_INTERPRET=1`` with tiny shapes (to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

#: Peak HBM bandwidth (GB/s) by device-name fragment, from vendor spec sheets.
PEAK_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
            "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600, "A10": 600, "B200": 8000}  # fmt: skip


def _bench(fn: Callable[[], object], device: str) -> float:
    """Milliseconds per call."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50))
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _peak_gbs(device: str) -> tuple[float, str]:
    if device != "cuda":
        return 0.0, "cpu (dry run)"
    name = torch.cuda.get_device_name()
    for key, gbs in PEAK_GBS.items():
        if key in name:
            return float(gbs), f"spec sheet ({key})"
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    ms = _bench(lambda: dst.copy_(buf), device)
    return 2 * buf.numel() / ms / 1e6, "measured device copy"


def correctness(lt: Any, device: str, small: bool) -> list[dict[str, Any]]:
    from localattn_kernels.testing import make_case

    window, sinks = (40, 4) if small else (200, 4)
    mixed = [(1, 3), (1, sinks), (1, window + sinks), (1, window + sinks + 1), (37, 37), (20, 130), (1, 300)]
    if not small:
        mixed += [(1, 5000), (700, 2000), (1, 1)]
    decode = [(1, n) for n in (1, sinks, window - 1, window + sinks + 1, 300, 1000 if small else 9000)]
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
    rows = []
    combos = [(64, 1, 16, torch.float16), (64, 4, 32, torch.bfloat16), (64, 8, 128, torch.float16),
              (128, 1, 128, torch.bfloat16), (128, 4, 16, torch.float16), (128, 8, 32, torch.bfloat16)]  # fmt: skip
    for head_size, group, block_size, dtype in combos[1:2] if small else combos:
        for name, reqs, splits in (
            ("mixed", mixed, None),
            ("decode", decode, 1),
            ("decode-split", decode, 4),
        ):
            for s in (sinks, 0):
                case = make_case(reqs, num_heads=2 * group, num_kv_heads=2, head_size=head_size,
                                 block_size=block_size, dtype=dtype, gpu_layout=True, device=device)  # fmt: skip
                ref = case.reference(window=window, sinks=s, scale=head_size**-0.5)
                got = lt.paged_local_attention(
                    case.query, case.key_cache, case.value_cache, block_table=case.block_table,
                    seq_lens=case.seq_lens, query_start_loc=case.query_start_loc, window=window, sinks=s,
                    scale=head_size**-0.5, num_splits=splits,
                )  # fmt: skip
                err = float((got.float() - ref.float()).abs().max())
                rows.append({"case": name, "head_size": head_size, "group": group, "block_size": block_size,
                             "dtype": str(dtype).removeprefix("torch."), "sinks": s, "max_abs_err": err,
                             "ok": err <= tol[dtype] * 4 and not torch.isnan(got).any().item()})  # fmt: skip
    return rows


def _paged(
    batch: int, context: int, *, hq: int, hkv: int, d: int, bs: int, q_len: int, device: str
) -> dict[str, Any]:
    """A cache holding ``batch`` sequences of ``context`` tokens (random, shuffled blocks), GPU layout."""
    from localattn_kernels import layout

    per = -(-context // bs)
    kv = torch.randn(layout.kv_cache_shape(batch * per, hkv, bs, d), dtype=torch.bfloat16, device=device)
    key_cache, value_cache = layout.split_kv_cache_gpu(kv)
    return {
        "query": torch.randn(batch * q_len, hq, d, dtype=torch.bfloat16, device=device),
        "key_cache": key_cache,
        "value_cache": value_cache,
        "block_table": torch.randperm(batch * per, device=device).view(batch, per).to(torch.int32),
        "seq_lens": torch.full((batch,), context, dtype=torch.int32, device=device),
        "query_start_loc": torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=device),
    }


def _baselines(c: dict[str, Any], window: int, q_len: int, context: int) -> dict[str, Callable[[], object]]:
    """vLLM's own GPU kernels on the same cache, full and sliding window (they have no sink tokens)."""
    out: dict[str, Callable[[], object]] = {}
    scale = c["query"].shape[-1] ** -0.5
    args = dict(max_seqlen_q=q_len, cu_seqlens_q=c["query_start_loc"], max_seqlen_k=context, seqused_k=c["seq_lens"],
                softmax_scale=scale, causal=True, block_table=c["block_table"])  # fmt: skip
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func

        def flash(ws: list[int]) -> Callable[[], object]:
            return lambda: flash_attn_varlen_func(
                c["query"], c["key_cache"], c["value_cache"], window_size=ws, **args
            )

        for name, ws in (("flash_full", [-1, -1]), ("flash_swa", [window - 1, 0])):
            out[name] = flash(ws)
            out[name]()
    except Exception as exc:
        out.pop("flash_full", None)
        out.pop("flash_swa", None)
        out["flash_error"] = repr(exc)[:200]  # type: ignore[assignment]
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention

        o = torch.empty_like(c["query"])

        def unified(ws: tuple[int, int]) -> Callable[[], object]:
            return lambda: unified_attention(
                c["query"], c["key_cache"], c["value_cache"], o, c["query_start_loc"], q_len, c["seq_lens"], context,
                scale, True, ws, c["block_table"], 0.0, None, None, None,
            )  # fmt: skip

        for name, span in (("vllm_triton_full", (-1, -1)), ("vllm_triton_swa", (window - 1, 0))):
            out[name] = unified(span)
            out[name]()
    except Exception as exc:
        out.pop("vllm_triton_full", None)
        out.pop("vllm_triton_swa", None)
        out["vllm_triton_error"] = repr(exc)[:200]  # type: ignore[assignment]
    return out


def timings(lt: Any, device: str, small: bool, deadline: float, peak: float) -> list[dict[str, Any]]:
    hq, hkv, d, bs, sinks = (8, 2, 64, 16, 4) if small else (32, 8, 128, 16, 4)
    configs = [  # (kind, batch, context, window)
        ("decode", 1, 256, 40), ("prefill", 1, 128, 40)] if small else [
        ("decode", 1, 16384, 512), ("decode", 1, 131072, 512), ("decode", 64, 16384, 512), ("decode", 256, 8192, 512),
        ("decode", 64, 32768, 4096), ("decode", 16, 131072, 8192), ("prefill", 1, 16384, 512), ("prefill", 4, 8192, 2048),
    ]  # fmt: skip
    rows = []
    for kind, batch, context, window in configs:
        if time.monotonic() > deadline:
            rows.append({"kind": kind, "batch": batch, "context": context, "skipped": "time budget"})
            continue
        q_len = 1 if kind == "decode" else context
        c = _paged(batch, context, hq=hq, hkv=hkv, d=d, bs=bs, q_len=q_len, device=device)
        scale = d**-0.5

        def ours(
            w: int, c: dict[str, Any] = c, q_len: int = q_len, scale: float = scale
        ) -> Callable[[], object]:
            return lambda: lt.paged_local_attention(
                c["query"], c["key_cache"], c["value_cache"], block_table=c["block_table"], seq_lens=c["seq_lens"],
                query_start_loc=c["query_start_loc"], window=w, sinks=sinks, scale=scale, max_query_len=q_len,
            )  # fmt: skip

        fns = {"local": ours(window), "local_as_full": ours(context + 1)}
        base = _baselines(c, window, q_len, context) if device == "cuda" else {}
        fns.update({k: v for k, v in base.items() if callable(v)})
        row: dict[str, Any] = {
            "kind": kind,
            "batch": batch,
            "context": context,
            "window": window,
            "sinks": sinks,
        }
        row.update({k: v for k, v in base.items() if not callable(v)})
        for name, fn in fns.items():
            try:
                row[f"{name}_ms"] = round(_bench(fn, device), 4)
            except Exception as exc:
                row[f"{name}_error"] = repr(exc)[:200]
        if kind == "decode":
            tokens = min(sinks, context) + min(window, context - min(sinks, context))
            nbytes = batch * tokens * hkv * d * 2 * 2  # K and V, bf16
            row["bytes_read_mb"] = round(nbytes / 1e6, 2)
            if peak and row.get("local_ms"):
                row["achieved_gbs"] = round(nbytes / row["local_ms"] / 1e6, 1)
                row["fraction_of_peak"] = round(row["achieved_gbs"] / peak, 3)
        for ref in ("local_as_full", "flash_full", "flash_swa", "vllm_triton_full", "vllm_triton_swa"):
            if row.get(f"{ref}_ms") and row.get("local_ms"):
                row[f"{ref}/local"] = round(row[f"{ref}_ms"] / row["local_ms"], 2)
        rows.append(row)
        del c
    return rows


def _markdown(meta: dict[str, Any], corr: list[dict[str, Any]], times: list[dict[str, Any]]) -> str:
    bad = [r for r in corr if not r["ok"]]
    lines = [
        f"### Kernels (GPU) — {meta['date']}, {meta['device']}",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, peak HBM {meta['peak_gbs']} GB/s ({meta['peak_source']}).",
        f"Correctness: {len(corr) - len(bad)}/{len(corr)} cases within tolerance"
        + (f"; FAILED: {bad}" if bad else "; worst max-abs error "
           f"{max((r['max_abs_err'] for r in corr), default=0):.2e}."),
        "",
        "| kind | batch | context | W | local ms | full (ours) ms | flash full | flash SWA | vLLM triton SWA | GB/s | % peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in times:
        if "skipped" in r:
            lines.append(f"| {r['kind']} | {r['batch']} | {r['context']} | skipped ({r['skipped']}) |||||||")
            continue
        pct = f"{100 * r['fraction_of_peak']:.0f}%" if "fraction_of_peak" in r else ""
        cells = [r["kind"], r["batch"], r["context"], r["window"], r.get("local_ms", r.get("local_error", "")),
                 r.get("local_as_full_ms", ""), r.get("flash_full_ms", ""), r.get("flash_swa_ms", ""),
                 r.get("vllm_triton_swa_ms", ""), r.get("achieved_gbs", ""), pct]  # fmt: skip
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/results"))
    parser.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    parser.add_argument(
        "--budget", type=float, default=240.0, help="seconds after which no new section starts"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels (and Triton's own helpers) are decorated
        if "triton" in sys.modules and not args.dry_run:
            print("warning: triton imported before interpret mode was set", file=sys.stderr)
    import triton

    import localattn_kernels.triton as lt

    small = device == "cpu"
    peak, source = _peak_gbs(device)
    meta = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU dry run ({platform.processor()})",
        "torch": torch.__version__, "triton": triton.__version__, "peak_gbs": peak, "peak_source": source,
    }  # fmt: skip
    print(json.dumps(meta), flush=True)
    corr: list[dict[str, Any]] = []
    times: list[dict[str, Any]] = []
    try:
        corr = correctness(lt, device, small)
        print(
            f"correctness: {sum(r['ok'] for r in corr)}/{len(corr)} ok ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
        times = timings(lt, device, small, start + args.budget, peak)
    except Exception:
        traceback.print_exc()
        meta["error"] = traceback.format_exc()[-2000:]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_gpu.json").write_text(
        json.dumps({"meta": meta, "correctness": corr, "timings": times}, indent=1)
    )
    md = _markdown(meta, corr, times)
    (args.out / "kernels_gpu.md").write_text(md)
    print(md)
    print(f"wrote {args.out / 'kernels_gpu.json'} and kernels_gpu.md in {time.monotonic() - start:.0f} s")
    return 0 if corr and all(r["ok"] for r in corr) and "error" not in meta else 1


if __name__ == "__main__":
    raise SystemExit(main())
