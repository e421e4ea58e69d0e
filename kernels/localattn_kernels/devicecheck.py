"""GPU check of the Triton kernels, run by ``benchmarks/device_check.sh``: correctness, then speed and bandwidth.

1. Correctness: every Triton path against the reference (fp32 on the device) over head sizes 64/128, GQA 1/4/8,
   block sizes 16/32/128, fp16/bf16, mixed batches crossing the sink/window bounds, split-KV decode. Then every
   baseline against the reference on small decode and prefill cases, each under the rule it claims (full causal,
   ours, or a window without sinks), so a wrong baseline mask cannot flatter our kernel.
2. Timings (``triton.testing.do_bench``, L2 flushed between runs): decode and prefill of our kernels with (W, S)
   vs the same kernels with W >= context (= full attention on the same cache) and vs ``baselines.BASELINES``: torch's
   FlashAttention-2 (SDPA restricted to its flash backend, full causal) and FlexAttention (compiled, block masks
   for our sinks + window rule and for full causal) on dense copies gathered once outside the timed region, and
   vLLM's FlashAttention / Triton unified attention on the paged cache when vLLM is importable (the GPU machine
   this was written for has none). Each baseline's output is compared with ours on the same data in every row.
3. Bandwidth: bytes a decode must read (sinks + window K/V of every sequence) / time, as a fraction of the
   device's peak HBM bandwidth (spec table by device name, else a measured device-to-device copy).

Writes ``kernels_gpu.json`` and ``kernels_gpu.md`` (the section for docs/benchmarks.md) into the output
directory. Stops starting new rows or baselines after ``--budget`` seconds so the whole run fits its time slot.
``--dry-run`` does the same on CPU under ``TRITON_INTERPRET=1`` with tiny shapes and FlexAttention uncompiled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from localattn_kernels import baselines

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


def correctness(lt: Any, device: str, small: bool, rows: list[dict[str, Any]]) -> None:
    """Every Triton path against the reference; appends one row per case (a run stopped midway keeps them)."""
    from localattn_kernels.testing import TRITON_COVER_WITH_FP32, make_case

    window, sinks = (40, 4) if small else (200, 4)
    mixed = [(1, 3), (1, sinks), (1, window + sinks), (1, window + sinks + 1), (37, 37), (20, 130), (1, 300)]
    if not small:
        mixed += [(1, 5000), (700, 2000), (1, 1)]
    decode = [(1, n) for n in (1, sinks, window - 1, window + sinks + 1, 300, 1000 if small else 9000)]
    full_below = window + sinks + 5  # the runtime's minContextLength: earlier positions attend fully
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}
    combos = TRITON_COVER_WITH_FP32
    for head_size, group, block_size, dtype in combos[1:2] if small else combos:
        for name, reqs, splits, below in (
            ("mixed", mixed, None, 0),
            ("decode", decode, 1, 0),
            ("decode-split", decode, 4, 0),
            ("mixed-full-below", mixed, None, full_below),
            ("decode-split-full-below", decode, 4, full_below),
        ):
            for s in (sinks, 0):
                case = make_case(reqs, num_heads=2 * group, num_kv_heads=2, head_size=head_size,
                                 block_size=block_size, dtype=dtype, gpu_layout=True, device=device)  # fmt: skip
                ref = case.reference(window=window, sinks=s, scale=head_size**-0.5)
                if below:
                    pos = torch.cat([torch.arange(n - q, n) for q, n in reqs]).to(device)
                    full = case.reference(window=10**6, sinks=0, scale=head_size**-0.5)
                    ref = torch.where((pos < below)[:, None, None], full, ref)
                got = lt.paged_local_attention(
                    case.query, case.key_cache, case.value_cache, block_table=case.block_table,
                    seq_lens=case.seq_lens, query_start_loc=case.query_start_loc, window=window, sinks=s,
                    scale=head_size**-0.5, num_splits=splits, full_below=below,
                )  # fmt: skip
                err = float((got.float() - ref.float()).abs().max())
                rows.append({"case": name, "head_size": head_size, "group": group, "block_size": block_size,
                             "dtype": str(dtype).removeprefix("torch."), "sinks": s, "max_abs_err": err,
                             "ok": err <= tol[dtype] * 4 and not torch.isnan(got).any().item()})  # fmt: skip


def check_baselines(device: str, deadline: float) -> list[dict[str, Any]]:
    """Every baseline against the reference under its rule, on a small decode and a small prefill.

    FlexAttention runs eagerly here (no compile time spent on shapes that are not timed): this checks its mask;
    the compiled kernel is checked against ours on every timed shape."""
    rows = []
    with baselines.flash_only():
        for case, batch, context, q_len in (("decode", 2, 300, 1), ("prefill", 2, 160, 160)):
            p = baselines.paged_problem(batch, context, hq=8, hkv=2, d=64, bs=16, q_len=q_len, window=40, sinks=4, device=device,
                       compile=False)  # fmt: skip
            _, info = baselines.try_baselines(p, deadline, p.reference)
            rows.append({"case": case, "batch": batch, "context": context, **info})
    return rows


def timings(lt: Any, device: str, small: bool, deadline: float, peak: float, rows: list[dict[str, Any]]) -> None:
    """Appends one row per shape to ``rows`` (so a run stopped midway still reports the rows it finished)."""
    hq, hkv, d, bs, sinks = (8, 2, 64, 16, 4) if small else (32, 8, 128, 16, 4)
    configs = [  # (kind, batch, context, window); both kinds early, as the budget cuts the tail
        ("decode", 1, 256, 40), ("prefill", 1, 128, 40)] if small else [
        ("decode", 1, 16384, 512), ("prefill", 1, 16384, 512), ("decode", 1, 131072, 512), ("decode", 64, 16384, 512),
        ("decode", 16, 131072, 8192), ("prefill", 4, 8192, 2048), ("decode", 256, 8192, 512), ("decode", 64, 32768, 4096),
    ]  # fmt: skip
    with baselines.flash_only():
        for kind, batch, context, window in configs:
            row: dict[str, Any] = {"kind": kind, "batch": batch, "context": context, "window": window, "sinks": sinks}
            if time.monotonic() > deadline:
                rows.append({**row, "skipped": "time budget"})
                continue
            p = baselines.paged_problem(batch, context, hq=hq, hkv=hkv, d=d, bs=bs, q_len=1 if kind == "decode" else context,
                       window=window, sinks=sinks, device=device)  # fmt: skip
            rows.append(_row(lt, p, row, device, deadline, peak, bytes_per_token=hkv * d * 2 * 2))
            del p
            if device == "cuda":
                torch.cuda.empty_cache()


def _row(lt: Any, p: baselines.Problem, row: dict[str, Any], device: str, deadline: float, peak: float,
         bytes_per_token: int) -> dict[str, Any]:  # fmt: skip
    """Time ours and every baseline that agrees with ours on this problem; bandwidth of our decode."""
    fns = {"local": baselines.ours(lt, p, "local"), "local_as_full": baselines.ours(lt, p, "full")}
    outs: dict[str, torch.Tensor] = {}

    def ours_out(rule: str) -> torch.Tensor:
        if rule not in outs:
            outs[rule] = baselines.ours(lt, p, rule)()
        return outs[rule]

    base, info = baselines.try_baselines(p, deadline, ours_out)
    fns.update(base)
    row.update(info)
    for name, fn in fns.items():
        try:
            row[f"{name}_ms"] = round(_bench(fn, device), 4)
        except Exception as exc:
            row[f"{name}_error"] = repr(exc)[:200]
    if p.q_len == 1:
        batch, ctx = p.seq_lens.shape[0], p.context
        nbytes = batch * (min(p.sinks, ctx) + min(p.window, ctx - min(p.sinks, ctx))) * bytes_per_token  # K+V, bf16
        row["bytes_read_mb"] = round(nbytes / 1e6, 2)
        if row.get("local_ms"):
            row["achieved_gbs"] = round(nbytes / row["local_ms"] / 1e6, 1)
            if peak:
                row["fraction_of_peak"] = round(row["achieved_gbs"] / peak, 3)
    for name in fns:
        if name != "local" and row.get(f"{name}_ms") and row.get("local_ms"):
            row[f"{name}/local"] = round(row[f"{name}_ms"] / row["local_ms"], 2)
    return row


def _markdown(meta: dict[str, Any], corr: list[dict[str, Any]], checks: list[dict[str, Any]],
              times: list[dict[str, Any]]) -> str:  # fmt: skip
    bad = [r for r in corr if not r["ok"]]
    ran = [n for n in ("local_as_full", *baselines.BASELINES) if any(f"{n}_ms" in r for r in times)]
    labels = {"local_as_full": "ours, W ≥ L"} | {n: label for n, (_, label, _) in baselines.BASELINES.items()}
    errs: dict[str, list[str]] = {}  # first error -> baselines that never produced a figure
    for n in baselines.BASELINES:
        first = next((r[f"{n}_error"] for r in checks + times if f"{n}_error" in r), None)
        if first and n not in ran:
            errs.setdefault(first, []).append(n)
    checked = {n: max(r[f"{n}_err"] for r in checks if f"{n}_err" in r) for n in baselines.BASELINES
               if any(f"{n}_err" in r for r in checks)}  # fmt: skip
    disagree = sorted({n for r in checks + times for n in r.get("disagree", [])})
    lines = [
        f"### Kernels (GPU) — {meta['date']}, {meta['device']}",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, peak HBM {meta['peak_gbs']} GB/s ({meta['peak_source']}).",
        f"Correctness: {len(corr) - len(bad)}/{len(corr)} cases within tolerance"
        + (f"; FAILED: {bad}" if bad else "; worst max-abs error "
           f"{max((r['max_abs_err'] for r in corr), default=0):.2e}."),
        "Baselines vs the reference (small decode + prefill, worst row-relative error): "
        + (", ".join(f"{n} {e:.1e}" for n, e in checked.items()) or "none ran")
        + (f"; DISAGREE (not timed): {', '.join(disagree)}." if disagree else "."),
        "",
        "Milliseconds per call; in brackets, baseline time / our local time.",
        "",
        "| " + " | ".join(["kind", "batch", "context", "W", "local ms", *(labels[n] for n in ran), "GB/s", "% peak"]) + " |",
        "|---" * (7 + len(ran)) + "|",
    ]  # fmt: skip
    for r in times:
        if "skipped" in r:
            lines.append(f"| {r['kind']} | {r['batch']} | {r['context']} | {r['window']} | skipped ({r['skipped']}) |"
                         + " |" * (len(ran) + 2))  # fmt: skip
            continue
        pct = f"{100 * r['fraction_of_peak']:.0f}%" if "fraction_of_peak" in r else ""
        cells = [r["kind"], r["batch"], r["context"], r["window"], r.get("local_ms", r.get("local_error", ""))]
        cells += [f"{r[f'{n}_ms']} ({r[f'{n}/local']}x)" if f"{n}/local" in r else "n/a" for n in ran]
        lines.append("| " + " | ".join(str(x) for x in [*cells, r.get("achieved_gbs", ""), pct]) + " |")
    if "error" in meta:
        lines += ["", f"STOPPED EARLY: {meta['error'].strip().splitlines()[-1]}"]
    if errs:
        lines += ["", "Not timed: " + "; ".join(f"{', '.join(ns)}: {e}" for e, ns in errs.items()) + "."]
    return "\n".join(lines) + "\n"


class Stopped(BaseException):
    """SIGTERM from the script's hard time limit; not an ``Exception``, so no per-baseline handler swallows it."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"signal {signum}: the hard time limit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/results"))
    parser.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds after which no new row or baseline starts"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
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
    checks: list[dict[str, Any]] = []
    times: list[dict[str, Any]] = []
    try:
        correctness(lt, device, small, corr)
        print(f"correctness: {sum(r['ok'] for r in corr)}/{len(corr)} ok ({time.monotonic() - start:.0f} s)",
              flush=True)  # fmt: skip
        checks = check_baselines(device, start + args.budget)
        print(f"baselines vs reference: {checks} ({time.monotonic() - start:.0f} s)", flush=True)
        timings(lt, device, small, start + args.budget, peak, times)
    except (Exception, Stopped):
        traceback.print_exc()
        meta["error"] = traceback.format_exc()[-2000:]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_gpu.json").write_text(
        json.dumps({"meta": meta, "correctness": corr, "baseline_checks": checks, "timings": times}, indent=1)
    )
    md = _markdown(meta, corr, checks, times)
    (args.out / "kernels_gpu.md").write_text(md)
    print(md)
    print(f"wrote {args.out / 'kernels_gpu.json'} and kernels_gpu.md in {time.monotonic() - start:.0f} s")
    agree = not any(r.get("disagree") for r in checks + times)
    return 0 if corr and all(r["ok"] for r in corr) and agree and "error" not in meta else 1


if __name__ == "__main__":
    raise SystemExit(main())
