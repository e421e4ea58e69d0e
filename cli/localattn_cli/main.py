"""`localattn`: one console script, one module per command group (each exposes `add_parser`)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Command groups, in help order. Each module: add_parser(subparsers) setting `func(args) -> int`.
_GROUPS = ("operator_cmd", "crd", "dashboard", "dev", "model", "calibrate", "load")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localattn",
        description="Serve LLMs on vLLM with sink + sliding-window attention, rolled out gradually on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        importlib.import_module(f"localattn_cli.{group}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
