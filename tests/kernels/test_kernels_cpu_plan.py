"""The per-step plan of the CPU path (`cpu.plan_step` + `cpu.planned_local_attention`, what the runtime's metadata
builder and each local layer call): one plan serves every layer of a step, on both paths, and equals the
one-shot `paged_local_attention`; bad batches fail in the plan, once, with the kernels' messages."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from localattn_kernels import cpu, cpu_native, layout
from localattn_kernels.testing import make_case

from .cases import DECODE, MIXED, SINKS, TOL, WINDOW


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("reqs", [MIXED, DECODE, [(33, 161)]], ids=["mixed", "decode", "prefill"])
def test_one_plan_serves_every_layer(reqs: list[tuple[int, int]], native: bool) -> None:
    base = make_case(reqs, num_heads=8, num_kv_heads=2, head_size=64, block_size=32, dtype=torch.bfloat16)
    # every layer shares the step's batch (block table, lengths); only its Q/K/V differ
    gen = torch.Generator().manual_seed(1)
    other_q = replace(base, query=torch.randn(base.query.shape, generator=gen).to(base.query.dtype))
    kv = -base.kv_cache  # another layer's cache tensor: same layout, other contents
    k, v = layout.split_kv_cache(kv)
    other_kv = replace(base, kv_cache=kv, key_cache=k, value_cache=v, keys=-base.keys, values=-base.values)
    layers = [base, other_q, other_kv]
    if native and not cpu_native.supports(base.query, base.key_cache, base.value_cache, "vec"):
        pytest.skip("the fused CPU kernels did not build here (no C compiler)")
    plan = cpu.plan_step(base.block_table, base.seq_lens, base.query_start_loc, block_size=32,
                         num_tokens=base.query.shape[0])
    assert (plan.native_decode is not None) == any(q == 1 for q, _ in reqs)
    assert (plan.native_prefill is not None) == any(q > 1 for q, _ in reqs)
    for case in layers:
        got = cpu.planned_local_attention(case.query, case.key_cache, case.value_cache, plan, window=WINDOW,
                                          sinks=SINKS, scale=0.125, native=native)
        want = case.reference(window=WINDOW, sinks=SINKS, scale=0.125)
        torch.testing.assert_close(got.float(), want.float(), **TOL[torch.bfloat16])
        one_shot = cpu.paged_local_attention(
            case.query, case.key_cache, case.value_cache, block_table=case.block_table, seq_lens=case.seq_lens,
            query_start_loc=case.query_start_loc, window=WINDOW, sinks=SINKS, scale=0.125)
        if native:
            assert torch.equal(got, one_shot)


def test_plan_rejects_bad_batches_and_mismatched_queries() -> None:
    case = make_case(MIXED, num_heads=4, num_kv_heads=2, head_size=32, block_size=16, dtype=torch.float32)
    n = case.query.shape[0]
    with pytest.raises(ValueError, match="query_start_loc covers"):
        cpu.plan_step(case.block_table, case.seq_lens, case.query_start_loc, block_size=16, num_tokens=n - 1)
    with pytest.raises(ValueError, match="needs more blocks than block_table has"):
        cpu.plan_step(case.block_table[:, :2], case.seq_lens, case.query_start_loc, block_size=16, num_tokens=n)
    with pytest.raises(ValueError, match="batch mismatch"):
        cpu.plan_step(case.block_table, case.seq_lens[:-1], case.query_start_loc, block_size=16, num_tokens=n)
    plan = cpu.plan_step(case.block_table, case.seq_lens, case.query_start_loc, block_size=16, num_tokens=n)
    with pytest.raises(ValueError, match="the step's plan"):
        cpu.planned_local_attention(case.query[:-1], case.key_cache, case.value_cache, plan, window=WINDOW,
                                    sinks=SINKS, scale=0.1, native=False)
    with pytest.raises(ValueError, match="head_size mismatch"):
        cpu.check_layer_args(case.query[..., :16], case.key_cache, case.value_cache, window=8, sinks=0, isa="vec")
    with pytest.raises(ValueError, match="isa must be one of"):
        cpu.check_layer_args(case.query, case.key_cache, case.value_cache, window=8, sinks=0, isa="avx")
