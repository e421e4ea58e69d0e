"""How a fake node "runs" a pod. One class per mode; the agent only talks to the `PodRuntime` protocol.

`simulate` runs nothing: the pod is reported Running and Ready at once. A later `process` mode will start
the pod's container command as a local process bound to the pod IP (127.1.i.x) and report readiness from
its probes; it plugs in here without touching the agent's watch/heartbeat loops.
"""

from __future__ import annotations

from typing import Any, Protocol


class PodRuntime(Protocol):
    def start(self, pod: dict[str, Any], pod_ip: str) -> bool:
        """Make the pod run (idempotent); True once it is ready to be reported Running and Ready."""
        ...

    def stop(self, key: str) -> None:
        """Stop whatever runs for pod `namespace/name` (idempotent)."""
        ...


class SimulateRuntime:
    """Runs nothing; every pod is instantly ready."""

    def start(self, pod: dict[str, Any], pod_ip: str) -> bool:
        return True

    def stop(self, key: str) -> None:
        return None


RUNTIMES: dict[str, type[PodRuntime]] = {"simulate": SimulateRuntime}
