"""`localattn crd generate|docs`: the CRD, and its reference page, generated from the pydantic models."""

from __future__ import annotations

import argparse
from pathlib import Path


def _generate(args: argparse.Namespace) -> int:
    from localattn_operator.crd import render_yaml

    text = render_yaml()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from localattn_operator.crd_docs import render_markdown

    text = render_markdown()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    crd = subparsers.add_parser("crd", help="the LocalAttnDeployment CustomResourceDefinition")
    verbs = crd.add_subparsers(dest="verb", metavar="VERB", required=True)
    gen = verbs.add_parser("generate", help="print the CRD YAML generated from the models")
    gen.add_argument("--out", help="write to this file instead of stdout")
    gen.set_defaults(func=_generate)
    docs = verbs.add_parser("docs", help="print the CRD reference (Markdown) generated from the same schema")
    docs.add_argument("--out", help="write to this file instead of stdout (docs/crd-reference.md)")
    docs.set_defaults(func=_docs)
