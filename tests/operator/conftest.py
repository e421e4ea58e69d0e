"""The operator as a real process (`localattn operator run`) against the session's control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev.procs import stop_child

ROOT = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """Start, stop (SIGTERM) or kill (SIGKILL) the operator, as a crash or a rollout of it would."""

    def __init__(self, kubeconfig: Path, log_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.env = env or {}  # e.g. leader election (tests/operator/test_e2e_ha.py)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115 (closed with the process)
        # A short pending grace: the Pending test needs the Warning soon; the clean run must still see none.
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LOCALATTN_RESYNC_SECONDS": "20",
               "LOCALATTN_PENDING_GRACE_SECONDS": "3", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localattn_cli.main", "operator", "run", "--metrics-port", "0", *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:  # SIGKILL after 30 s: a stuck shutdown must not leak an operator into later tests
            stop_child(self.proc, group=True, sig=sig)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("operator-*.log")))


@pytest.fixture(scope="session")
def operator_factory() -> type[OperatorProcess]:
    """The class, for suites that run operators of their own (leader-election replicas, a chaos cluster's)."""
    return OperatorProcess


@pytest.fixture(scope="session")
def crd_installed(k8s: Any) -> None:
    k8s.kubectl("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml"))
    k8s.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                "crd/localattndeployments.localattn.dev")


@pytest.fixture
def namespace(namespace: str, k8s: Any) -> str:
    """A throwaway namespace holding the `models` claim the example mounts (examples/model-pvc.yaml)."""
    manifest = (ROOT / "examples" / "model-pvc.yaml").read_text()
    manifest = manifest.replace("localattn-models-default", f"localattn-models-{namespace}")
    manifest = manifest.replace("namespace: default", f"namespace: {namespace}")
    k8s.kubectl("apply", "-f", "-", input=manifest)
    k8s.wait_for(lambda: (k8s.get(namespace, "pvc", "models").get("status") or {}).get("phase") == "Bound",
                 "the models claim to bind")
    return namespace


@pytest.fixture(scope="session")
def _operator_process(k8s: Any, crd_installed: None) -> Iterator[OperatorProcess]:
    process = OperatorProcess(k8s.kubeconfig, Path(tempfile.mkdtemp(prefix="localattn-operator-")))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def operator(_operator_process: OperatorProcess, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """A running operator for each test (restarted if a previous test stopped it); its log on failure."""
    _operator_process.start()
    yield _operator_process
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n--- operator log ---\n{_operator_process.logs()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
