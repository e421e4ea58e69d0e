"""Request mixes shared by the CPU and Triton tests: lengths below, at and across the sink/window bounds."""

from __future__ import annotations

import torch

WINDOW, SINKS = 40, 4

#: (q_len, seq_len): decode below/at/across S, at/across W and W + S, long decode; prefill; chunked prefill.
MIXED = [
    (1, 3), (1, SINKS), (1, SINKS + 1), (1, WINDOW), (1, WINDOW + SINKS), (1, WINDOW + SINKS + 1), (1, 300),
    (37, 37), (20, 130), (3, 75),
]  # fmt: skip
DECODE = [(1, n) for n in (1, 3, SINKS, WINDOW - 1, WINDOW + SINKS, WINDOW + SINKS + 1, 97, 300)]

TOL = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 4e-3, "rtol": 4e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}

#: Prefill-heavy mix: whole prompts below/at/across S, W and W + S (query counts that leave partial tasks),
#: chunks whose first position is past the window (middle of a long sequence), one decode row in between.
PREFILL = [
    (2, 2), (SINKS, SINKS), (SINKS + 1, SINKS + 1), (WINDOW - 1, WINDOW - 1), (WINDOW + SINKS + 1, WINDOW + SINKS + 1),
    (1, 90), (17, 17 + WINDOW), (5, 300), (WINDOW + 3, 2 * WINDOW + 9), (33, 161),
]  # fmt: skip
