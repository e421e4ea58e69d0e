"""How a fake node "runs" a pod. One class per mode; the agent only talks to the `PodRuntime` protocol.

`simulate` runs nothing: the pod is reported Running and Ready at once. `process`
(`processruntime.ProcessRuntime`) starts the pod's containers as local processes bound to the pod IP and
reports their state and probe results as they change; it calls the listener with the pod's key whenever
its view changed, and the agent then patches the pod status (only when it differs from what it sent).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from localattn_dev import nodes


class PodRuntime(Protocol):
    def set_listener(self, callback: Callable[[str], None]) -> None:
        """`callback(key)` is called (from any thread) when the status of pod `namespace/name` changed."""
        ...

    def sync(self, pod: dict[str, Any], pod_ip: str, host_ip: str) -> None:
        """Make the pod run as its spec says (idempotent: called on every event of the pod)."""
        ...

    def status(self, key: str) -> dict[str, Any] | None:
        """The pod-status patch (`{"status": ...}`) the runtime observes now; None: nothing to report."""
        ...

    def terminate(self, key: str, grace: float) -> bool:
        """Stop the pod (SIGTERM, `grace` seconds, SIGKILL); True once nothing runs for it any more."""
        ...

    def forget(self, key: str) -> None:
        """The pod is gone from the API: stop whatever still runs for it (idempotent)."""
        ...

    def prune(self, live_uids: set[str]) -> None:
        """After a full list: stop what runs for pods (by uid) that no longer exist."""
        ...

    def close(self) -> None:
        """The agent exits; what runs is left for the next agent to adopt."""
        ...


class SimulateRuntime:
    """Runs nothing; every pod is instantly Running and Ready."""

    def __init__(self, state_dir: Path | None = None, reader: Any = None) -> None:
        self._status: dict[str, dict[str, Any]] = {}

    def set_listener(self, callback: Callable[[str], None]) -> None:
        return None

    def sync(self, pod: dict[str, Any], pod_ip: str, host_ip: str) -> None:
        key = nodes.pod_key(pod)
        if key not in self._status:
            self._status[key] = nodes.running_status(pod, pod_ip, host_ip, datetime.now(UTC))

    def status(self, key: str) -> dict[str, Any] | None:
        return self._status.get(key)

    def terminate(self, key: str, grace: float) -> bool:
        return True

    def forget(self, key: str) -> None:
        self._status.pop(key, None)

    def prune(self, live_uids: set[str]) -> None:
        return None

    def close(self) -> None:
        return None


def make_runtime(mode: str, state_dir: Path, reader: Any) -> PodRuntime:
    if mode == "process":
        from localattn_dev.processruntime import ProcessRuntime

        return ProcessRuntime(state_dir, reader)
    return SimulateRuntime(state_dir, reader)


MODES = ("simulate", "process")
