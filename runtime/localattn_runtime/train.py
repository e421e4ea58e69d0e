"""CPU training (minutes) that turns the tiny Llama into a model with real perplexity and long-range use.

Why train at all: calibration and the quality benchmark measure how much a model loses when attention is cut
to sinks + a window. A random model attends uniformly and loses nothing meaningful; a trained one concentrates
mass on the first token (the "sink") and copies identifiers from far back, which is exactly what local
attention can break. Data: the standard library's sources (training split of `tinymodel`), sequences of
`seq_len` tokens that start with BOS, as vLLM prompts do. Deterministic: fixed seeds and data order.

The default run sees ~4M tokens (1,000 steps of 4 x 1024) — too few for copy ("induction") heads to form
from natural repetition alone. So a fraction of the rows get one segment of the row pasted again further on, 64+ tokens
later: copying from far back then pays off quickly, the model learns it, and uses it on real held-out code
(identifiers, calls and idioms recur across a file), which is the long-range dependence local attention
must preserve. Evaluation text is never augmented.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localattn_runtime import tinymodel


@dataclass(frozen=True)
class TrainParams:
    """Everything that determines the trained weights (part of the cache key)."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 2048
    max_positions: int = 32768
    seq_len: int = 1024
    batch: int = 4
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.1
    repeat_fraction: float = 0.3
    seed: int = 0


def token_stream(tok: Any, held_out: bool) -> list[int]:
    """All files of one split, tokenized without BOS and joined by EOS (file boundaries stay visible)."""
    eos = tok.convert_tokens_to_ids(tinymodel.EOS)
    ids: list[int] = []
    for text in tinymodel.read_texts(held_out):
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return ids


def sample_batches(stream: Sequence[int], bos: int, p: TrainParams) -> Any:
    """`steps` batches of BOS + (seq_len - 1) consecutive stream tokens at seeded random offsets."""
    import torch

    g = torch.Generator().manual_seed(p.seed)
    data = torch.tensor(stream, dtype=torch.long)
    span = p.seq_len - 1
    for _ in range(p.steps):
        starts = torch.randint(0, len(data) - span, (p.batch,), generator=g)
        rows = []
        for s in starts.tolist():
            row = data[s : s + span].clone()
            if float(torch.rand((), generator=g)) < p.repeat_fraction:
                paste_segment(row, g)
            rows.append(torch.cat([torch.tensor([bos]), row]))
        yield torch.stack(rows)


def paste_segment(row: Any, g: Any) -> None:
    """Copy a random segment (32-256 tokens) of `row` to a random later place at least 64 tokens after it."""
    import torch

    n = len(row)
    m = int(torch.randint(32, 257, (), generator=g))
    a = int(torch.randint(0, max(1, n // 2 - m), (), generator=g))
    lo = a + m + 64
    if lo >= n - m:
        return
    b = int(torch.randint(lo, n - m, (), generator=g))
    row[b : b + m] = row[a : a + m].clone()


def lr_at(step: int, p: TrainParams) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    frac = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _log(msg: str) -> None:
    print(msg, flush=True)


def train(out: Path, p: TrainParams, log: Callable[[str], None] = _log) -> None:
    """Train from the seeded init and save a vLLM-loadable model directory into `out`."""
    import torch

    tok_dir = tinymodel.tokenizer_dir(p.vocab)
    tok = tinymodel.load_tokenizer(tok_dir)
    config = tinymodel.llama_config(layers=p.layers, hidden=p.hidden, heads=p.heads, kv_heads=p.kv_heads,
                                    vocab=p.vocab, max_positions=p.max_positions)
    model = tinymodel.init_model(config, p.seed)
    model.config._attn_implementation = "sdpa"
    model.train()
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "embed" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
    stream = token_stream(tok, held_out=False)
    bos = tok.convert_tokens_to_ids(tinymodel.BOS)
    log(f"train: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M params, {len(stream)} tokens, "
        f"{p.steps} steps x {p.batch} x {p.seq_len}")
    t0 = time.time()
    history = []
    for step, batch in enumerate(sample_batches(stream, bos, p)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, p)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(loss.item())
        if step % 10 == 0 or step == p.steps - 1:
            log(f"step {step:4d}  loss {history[-1]:.3f}  {time.time() - t0:6.0f}s")
    tinymodel.save_model(out, config, model.state_dict(), tok_dir)
    (out / "training.json").write_text(json.dumps(
        {"params": asdict(p), "loss": history, "seconds": round(time.time() - t0, 1)}, indent=1) + "\n")


def trained_model_dir(params: TrainParams | None = None, log: Callable[[str], None] = _log) -> Path:
    """The cached trained model (trains on first use: ~7 min on an idle core, ~15 min on a busy 2-core box).

    Training runs on one thread: the weights then do not depend on the machine's core count (reduction order),
    and on a shared 2-core machine one thread is faster than two fighting other jobs for the cores.
    """
    import torch

    p = params or TrainParams()
    key = tinymodel.cache_key(asdict(p), __name__, tinymodel.__name__)

    def build(out: Path) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(out, p, log)
        finally:
            torch.set_num_threads(threads)

    return tinymodel.cached_dir(f"trained-{key}", build)
