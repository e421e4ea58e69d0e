"""`localattn load`: a steady, bounded request stream against an OpenAI-compatible server (vLLM's own client)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GRACE_SECONDS = 60.0  # past --duration: the client's start-up (tokenizer, dataset) and the last requests


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "load",
        help="drive a server with `vllm bench serve`: prompts below and above a window; TTFT/ITL/E2EL percentiles",
    )
    p.add_argument("--target", required=True, help="base URL, e.g. $(localattn dev url my-lad)")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--requests", type=int, default=100, help="at most this many requests (default 100)")
    p.add_argument("--duration", type=float, default=None, help="seconds; with --rate bounds the count to rate x duration")
    p.add_argument("--rate", type=float, default=None, help="requests per second (Poisson); default: no pacing")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    p.add_argument("--window", type=int, default=256, help="prompt lengths centre on this many tokens (default 256)")
    p.add_argument("--spread", type=float, default=0.75, help="prompts span window x (1 +- spread) (default 0.75)")
    p.add_argument("--output-len", type=int, default=32, help="tokens generated per request (default 32)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or name (default: the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="also keep vLLM's result JSON here")
    p.set_defaults(func=_load)


def _load(args: argparse.Namespace) -> int:
    from localattn_dev.load import LoadSpec, bench_argv, format_summary, summarize

    spec = LoadSpec(
        target=args.target, model=args.model, requests=args.requests, duration=args.duration, rate=args.rate,
        concurrency=args.concurrency, window=args.window, spread=args.spread, output_len=args.output_len,
        tokenizer=args.tokenizer, seed=args.seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="localattn-load-") as tmp:
        try:
            argv = bench_argv(spec, Path(tmp), "result.json")
        except ValueError as e:
            print(f"load: {e}", file=sys.stderr)
            return 2
        limit = None if args.duration is None else args.duration + GRACE_SECONDS
        try:
            # Progress (vLLM's tqdm bar and its own report) goes straight to the terminal.
            code = subprocess.run(argv, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"load: stopped at the time bound ({limit:.0f} s); no result", file=sys.stderr)
            return 1
        result_path = Path(tmp) / "result.json"
        if code != 0 or not result_path.exists():
            print(f"load: vllm bench serve failed (exit {code})", file=sys.stderr)
            return 1
        result = json.loads(result_path.read_text())
        if args.save is not None:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(json.dumps(result, indent=1))
    summary = summarize(result, args.window)
    print(format_summary(summary, args.window))
    return 0 if summary.completed > 0 else 1
