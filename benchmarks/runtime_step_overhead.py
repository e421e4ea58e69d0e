"""Host (Python) time the CPU backend spends per local layer per step, before and after moving the per-batch work
into the metadata builder.

A decode step of a many-layer model runs the local kernel once per local layer over the same batch. Before, each
layer's call re-did the batch's checks, host reads (`.tolist()`), per-row lists and int32 tensors
(`localattn_kernels.cpu.paged_local_attention`); now the builder does that once per step
(`cpu.plan_step`) and each layer calls `cpu.planned_local_attention`, having checked its own shapes once.
Both loops below also do the backend's own per-layer work (splitting the layer's KV cache tensor). The shapes are
tiny (1 KV head, d=32, short sequences) so that the kernel itself costs little and the host work shows; the
kernel-only time (the fused C calls with prepared arguments) is measured too and subtracted.

    .venv/bin/python benchmarks/runtime_step_overhead.py [--layers 32] [--batches 1,8,32] [--repeats 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from localattn_kernels import cpu, cpu_native, layout

WINDOW, SINKS, BS = 64, 4, 32


def _case(batch: int, layers: int, prefill: int) -> dict[str, object]:
    """`layers` KV caches (one per layer) and a step of `batch` decode rows plus one `prefill`-token chunk."""
    gen = torch.Generator().manual_seed(batch)
    ctx = 200
    reqs = [(1, ctx)] * batch + ([(prefill, ctx + prefill)] if prefill else [])
    per = [-(-s // BS) for _, s in reqs]
    blocks = sum(per) + 1
    caches = [torch.randn(layout.kv_cache_shape(blocks, 1, BS, 32), generator=gen).to(torch.bfloat16)
              for _ in range(layers)]
    table = torch.zeros(len(reqs), max(per), dtype=torch.int32)
    used = 0
    for r, n in enumerate(per):
        table[r, :n] = torch.arange(used, used + n, dtype=torch.int32)
        used += n
    q_lens = torch.tensor([q for q, _ in reqs])
    qsl = torch.zeros(len(reqs) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(q_lens, 0)
    seq_lens = torch.tensor([s for _, s in reqs], dtype=torch.int32)
    tokens = int(qsl[-1])
    query = torch.randn(tokens, 4, 32, generator=gen).to(torch.bfloat16)
    return {"caches": caches, "table": table, "qsl": qsl, "seq_lens": seq_lens, "query": query,
            "out": torch.empty_like(query)}


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(batch: int, layers: int, prefill: int, repeats: int) -> dict[str, float]:
    c = _case(batch, layers, prefill)
    caches, table, qsl, seq_lens = c["caches"], c["table"], c["qsl"], c["seq_lens"]
    query, out = c["query"], c["out"]
    assert isinstance(caches, list) and isinstance(query, torch.Tensor) and isinstance(out, torch.Tensor)
    assert isinstance(table, torch.Tensor) and isinstance(qsl, torch.Tensor) and isinstance(seq_lens, torch.Tensor)
    scale = 32**-0.5

    def before() -> None:  # every layer: the whole call, as the backend made it until now
        for kv in caches:
            k, v = layout.split_kv_cache(kv)
            cpu.paged_local_attention(query, k, v, block_table=table, seq_lens=seq_lens, query_start_loc=qsl,
                                      window=WINDOW, sinks=SINKS, scale=scale, out=out)

    k0, v0 = layout.split_kv_cache(caches[0])
    cpu.check_layer_args(query, k0, v0, window=WINDOW, sinks=SINKS, isa="vec")  # once per layer, at start-up
    native = cpu_native.supports(query, k0, v0, "vec")

    def after() -> None:  # the builder plans once per step, every layer runs the planned call
        plan = cpu.plan_step(table, seq_lens, qsl, block_size=BS, num_tokens=query.shape[0])
        for kv in caches:
            k, v = layout.split_kv_cache(kv)
            cpu.planned_local_attention(query, k, v, plan, window=WINDOW, sinks=SINKS, scale=scale, out=out,
                                        native=native)

    plan = cpu.plan_step(table, seq_lens, qsl, block_size=BS, num_tokens=query.shape[0])

    def kernels_only() -> None:  # the fused C calls alone, arguments prepared
        for kv in caches:
            k, v = layout.split_kv_cache(kv)
            if plan.native_decode is not None:
                cpu_native.decode(query, k, v, out, *plan.native_decode, window=WINDOW, sinks=SINKS, scale=scale)
            if plan.native_prefill is not None:
                cpu_native.prefill(query, k, v, out, *plan.native_prefill, window=WINDOW, sinks=SINKS, scale=scale)

    # interleaved, several rounds: a busy machine hurts all three alike
    rounds: dict[str, list[float]] = {"before": [], "after": [], "kernels": []}
    for _ in range(5):
        rounds["before"].append(_time(before, repeats // 5))
        rounds["after"].append(_time(after, repeats // 5))
        rounds["kernels"].append(_time(kernels_only, repeats // 5))
    return {name: min(ts) for name, ts in rounds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", default="1,8,32", help="decode rows per step (comma-separated)")
    parser.add_argument("--prefill", type=int, default=64, help="tokens of one chunked-prefill row (0: none)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not cpu_native.available():
        raise SystemExit("the fused CPU kernels did not build (no C compiler?)")
    print(f"{args.layers} local layers per step, decode rows + one {args.prefill}-token prefill chunk, bf16, 4/1 "
          f"heads, d=32, W={WINDOW}, 1 thread; min of repeats over 5 interleaved rounds")
    print(f"{'decode rows':>11}  {'before ms/step':>14}  {'after ms/step':>13}  {'kernels ms':>10}  "
          f"{'host us/layer before':>20}  {'after':>6}  {'saved ms/step':>13}")
    for batch in (int(b) for b in args.batches.split(",")):
        t = measure(batch, args.layers, args.prefill, args.repeats)
        host_before = (t["before"] - t["kernels"]) / args.layers * 1e6
        host_after = (t["after"] - t["kernels"]) / args.layers * 1e6
        print(f"{batch:>11}  {t['before'] * 1e3:>14.3f}  {t['after'] * 1e3:>13.3f}  {t['kernels'] * 1e3:>10.3f}  "
              f"{host_before:>20.1f}  {host_after:>6.1f}  {(t['before'] - t['after']) * 1e3:>13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
