"""`localattn model tiny --out DIR [--random]`: a small Llama built locally (tokenizer + weights), no downloads."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="build small local models")
    sub = model.add_subparsers(dest="model_command", required=True)
    tiny = sub.add_parser("tiny", help="the tiny Llama trained on the stdlib (cached under ~/.cache/localattn)")
    tiny.add_argument("--out", required=True, help="directory to write the model to (created if needed)")
    tiny.add_argument("--random", action="store_true",
                      help="random weights (seconds) instead of the trained model (minutes on first use)")
    tiny.set_defaults(func=_tiny)


def _tiny(args: argparse.Namespace) -> int:
    from localattn_runtime import tinymodel

    if args.random:
        src = tinymodel.random_model_dir()
    else:
        from localattn_runtime.train import trained_model_dir

        src = trained_model_dir()
    out = tinymodel.materialize(src, args.out)
    print(f"tiny model ({'random' if args.random else 'trained'}) in {out} (cache: {src})")
    return 0
