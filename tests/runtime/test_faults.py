"""The test-only latency fault (`LOCALATTN_TEST_DELAY_MS`): off unless set, refused when malformed, and a step
with work waits exactly the configured time before the wrapped `execute_model` runs (outputs untouched)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from localattn_runtime import faults
from localattn_runtime.config import ConfigError


class Runner:
    """Stands in for vLLM's model runner: `execute_model(self, scheduler_output, ...)`."""

    def execute_model(self, scheduler_output: Any, intermediate_tensors: Any = None) -> tuple[Any, Any]:
        return scheduler_output, intermediate_tensors


def test_off_unless_set() -> None:
    assert faults.delay_ms({}) == 0
    assert faults.delay_ms({faults.ENV_DELAY_MS: " "}) == 0
    before = Runner.execute_model
    assert faults.install({}, Runner) is False
    assert Runner.execute_model is before


@pytest.mark.parametrize("raw", ["fast", "1.5", "-1", str(faults.MAX_DELAY_MS + 1)])
def test_a_malformed_delay_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=faults.ENV_DELAY_MS):
        faults.delay_ms({faults.ENV_DELAY_MS: raw})


def test_a_step_with_work_waits_then_runs_the_original() -> None:
    slept: list[float] = []
    wrapped = faults.delayed(Runner.execute_model, 250, sleep=slept.append)
    busy = SimpleNamespace(total_num_scheduled_tokens=7)
    assert wrapped(Runner(), busy, intermediate_tensors="x") == (busy, "x")
    assert slept == [0.25]
    idle = SimpleNamespace(total_num_scheduled_tokens=0)
    assert wrapped(Runner(), idle) == (idle, None)
    assert slept == [0.25], "an idle step is not delayed"


def test_install_wraps_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class Own(Runner):
        pass

    monkeypatch.setattr(Own, "execute_model", Runner.execute_model, raising=False)
    env = {faults.ENV_DELAY_MS: "40"}
    assert faults.install(env, Own) is True
    first = Own.execute_model
    assert first._localattn_test_delay_ms == 40  # type: ignore[attr-defined]
    assert faults.install(env, Own) is True  # vLLM loads plugins more than once per process
    assert Own.execute_model is first
    assert Own().execute_model(SimpleNamespace(total_num_scheduled_tokens=0)) is not None
