"""Fault injection for tests: a latency the runtime adds on purpose. Off unless its variable is set.

`LOCALATTN_TEST_DELAY_MS=N` makes every model step that has work (one forward of the running batch, in the
process that runs the model) wait N ms first. TTFT, inter-token and end-to-end latency then grow as a slow
revision's would, while every output stays exactly the same (quality unchanged). It exists so that the rollout's
latency gate is tested end to end on real vLLM pods: `tests/operator/test_e2e_rollout_real.py` gives a canary
the variable through `spec.runtime.env`. Never set it in production; the runtime logs a warning when it is on.

The hook wraps vLLM's `GPUModelRunner.execute_model`, which vLLM's CPU model runner inherits (vLLM 0.32,
`plugin.SUPPORTED_VLLM`), so it works on both platforms and whether or not local attention is enabled.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from localattn_runtime.config import ConfigError

log = logging.getLogger(__name__)

ENV_DELAY_MS = "LOCALATTN_TEST_DELAY_MS"
MAX_DELAY_MS = 60_000
_MARK = "_localattn_test_delay_ms"


def delay_ms(env: Mapping[str, str] | None = None) -> int:
    """The configured delay in ms (0: off). A value that is not an integer in 0..60000 is refused at start-up:
    a typo must not silently run a test without its fault."""
    raw = (os.environ if env is None else env).get(ENV_DELAY_MS, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_DELAY_MS:
        raise ConfigError(ENV_DELAY_MS, f"must be an integer number of milliseconds in 0..{MAX_DELAY_MS}, got {raw!r}")
    return value


def delayed(execute_model: Callable[..., Any], ms: int,
            sleep: Callable[[float], None] = time.sleep) -> Callable[..., Any]:
    """`execute_model(self, scheduler_output, ...)` that first waits `ms` when the step schedules tokens (an
    idle step, which vLLM runs to keep workers in sync, is not delayed)."""

    @functools.wraps(execute_model)
    def wrapper(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(scheduler_output, "total_num_scheduled_tokens", 0) > 0:
            sleep(ms / 1000)
        return execute_model(self, scheduler_output, *args, **kwargs)

    setattr(wrapper, _MARK, ms)
    return wrapper


def install(env: Mapping[str, str] | None = None, runner: type | None = None) -> bool:
    """Wrap the model runner's `execute_model` when the delay is set; True if a delay is active. Idempotent
    (vLLM loads plugins more than once per process). `runner` defaults to vLLM's `GPUModelRunner`."""
    ms = delay_ms(env)
    if ms == 0:
        return False
    if runner is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        runner = GPUModelRunner
    current = runner.execute_model  # type: ignore[attr-defined]
    if getattr(current, _MARK, None) is None:
        runner.execute_model = delayed(current, ms)  # type: ignore[attr-defined]
        log.warning("localattn: FAULT INJECTION for tests: every model step waits %d ms (%s is set)", ms, ENV_DELAY_MS)
    return True
