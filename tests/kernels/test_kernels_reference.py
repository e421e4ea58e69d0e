"""The reference is the oracle, so it is checked against independent formulations, not against itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from localattn_kernels.reference import local_attention, local_mask


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lens]).cumsum(0).to(torch.int32)


def test_mask_rule_by_example() -> None:
    # W=2, S=1, 5 positions: each query sees key 0, itself and its predecessor.
    got = local_mask(torch.arange(5), 5, window=2, sinks=1).int().tolist()
    assert got == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 1, 1, 0],
        [1, 0, 0, 1, 1],
    ]


def test_window_of_one_without_sinks_is_identity() -> None:
    q, k, v = torch.randn(6, 2, 8), torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    out = local_attention(q, k, v, cu_seqlens_q=_cu([6]), cu_seqlens_k=_cu([6]), window=1, sinks=0, scale=0.3)
    torch.testing.assert_close(out, v)


@pytest.mark.parametrize("group", [1, 4])
def test_large_window_equals_causal_sdpa(group: int) -> None:
    q = torch.randn(2, 9, 2 * group, 16)
    k, v = torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True, scale=0.25
    ).transpose(1, 2)
    got = local_attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
        cu_seqlens_q=_cu([9, 9]), cu_seqlens_k=_cu([9, 9]), window=9, sinks=3, scale=0.25,
    )  # fmt: skip
    torch.testing.assert_close(got, want.flatten(0, 1), atol=1e-5, rtol=1e-5)


def test_matches_per_query_loop_with_gqa_and_suffix_queries() -> None:
    """Queries are the last len_q positions; head h reads KV head h // group."""
    torch.manual_seed(1)
    lens_q, lens_k, window, sinks, scale = [3, 1], [11, 5], 4, 2, 0.5
    q = torch.randn(sum(lens_q), 4, 8)
    k, v = torch.randn(sum(lens_k), 2, 8), torch.randn(sum(lens_k), 2, 8)
    got = local_attention(
        q, k, v, cu_seqlens_q=_cu(lens_q), cu_seqlens_k=_cu(lens_k), window=window, sinks=sinks, scale=scale
    )
    row, base = 0, 0
    for lq, lk in zip(lens_q, lens_k, strict=True):
        for t in range(lq):
            i = lk - lq + t
            keys = [j for j in range(lk) if j <= i and (j < sinks or j > i - window)]
            for h in range(4):
                kk = k[base + torch.tensor(keys), h // 2]
                vv = v[base + torch.tensor(keys), h // 2]
                p = torch.softmax((kk @ q[row, h]) * scale, dim=0)
                torch.testing.assert_close(got[row, h], p @ vv, atol=1e-5, rtol=1e-5)
            row += 1
        base += lk


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window must be"),
        ({"sinks": -1}, "sinks must be"),
        ({"k": torch.randn(4, 3, 8), "v": torch.randn(4, 3, 8)}, "num_heads"),
        ({"v": torch.randn(4, 2, 4)}, "shapes differ"),
        ({"k": torch.randn(4, 2, 8).half(), "v": torch.randn(4, 2, 8).half()}, "dtype mismatch"),
        ({"cu_seqlens_q": torch.tensor([0, 4.0])}, "int32 or int64"),
        ({"cu_seqlens_q": torch.tensor([0, 3], dtype=torch.int32)}, "must end at"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    args = {
        "q": torch.randn(4, 4, 8), "k": torch.randn(4, 2, 8), "v": torch.randn(4, 2, 8),
        "cu_seqlens_q": _cu([4]), "cu_seqlens_k": _cu([4]), "window": 2, "sinks": 1, "scale": 1.0,
    }  # fmt: skip
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=message):
        local_attention(q, k, v, **args)
