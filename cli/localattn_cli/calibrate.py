"""`localattn calibrate`: measure per-layer attention mass outside sinks + window and propose global layers."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="choose which layers stay global (writes a plan file)")
    p.add_argument("--model", required=True, help="model directory (HF format)")
    p.add_argument("--window", type=int, required=True, help="window size W (tokens)")
    p.add_argument("--sinks", type=int, required=True, help="sink tokens S")
    p.add_argument("--budget", type=int, required=True, help="number K of layers that stay global")
    p.add_argument("--samples", type=int, default=4, help="held-out sample sequences (default 4)")
    p.add_argument("--length", type=int, default=1024, help="tokens per sample (default 1024)")
    p.add_argument("--text", action="append", metavar="FILE",
                   help="sample text file(s) instead of held-out stdlib sources (repeatable)")
    p.add_argument("--out", help="write the plan JSON here (default: print it)")
    p.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from localattn_runtime import calibrate

    texts = [Path(f).read_text() for f in args.text] if args.text else None
    try:
        plan = calibrate.calibrate(args.model, args.window, args.sinks, args.budget, samples=args.samples,
                                   length=args.length, texts=texts)
    except ValueError as e:
        print(f"localattn calibrate: {e}", file=sys.stderr)
        return 2
    print(calibrate.format_table(plan))
    if args.out:
        calibrate.write_plan(plan, args.out)
        print(f"plan written to {args.out}")
    else:
        print(json.dumps(plan, indent=2))
    return 0
