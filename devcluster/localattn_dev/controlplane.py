"""Start, inspect and stop the dev cluster: etcd, kube-apiserver, controller-manager, scheduler, node agent.

Everything binds to 127.0.0.1 on free ports and lives under one state dir, so several clusters (a dev one,
a test one) coexist. `up` is idempotent and restarts only what is not running; `down` signals only the
process groups recorded in the state dir. With `$KUBECONFIG` pointing at a live cluster, `up` uses that
cluster and starts nothing (a node agent only when asked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localattn_dev import gatewayschema, health, modelstore, processruntime, procs
from localattn_dev import kubeconfig as kc
from localattn_dev.assets import find_assets
from localattn_dev.components import (
    COMPONENTS,
    DEPENDENTS,
    Layout,
    NodeSpec,
    Ports,
    apiserver_argv,
    controller_manager_argv,
    dataplane_argv,
    etcd_argv,
    node_agent_argv,
    scheduler_argv,
    server_url,
)
from localattn_dev.paths import resolve_state_dir
from localattn_dev.pki import ensure_pki
from localattn_dev.ports import pick_ports


class ClusterError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: Path
    server: str
    state_dir: Path
    started: bool  # this call started at least one process
    external: bool = False  # a cluster from $KUBECONFIG: we run none of its control plane
    nodes: tuple[str, ...] = ()  # fake GPU nodes our agent serves (empty: no agent of ours)
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


def kubeconfig_path(state_dir: Path | str | None = None) -> Path:
    """The admin kubeconfig `up` writes (it exists once the cluster was started)."""
    return Layout(resolve_state_dir(state_dir)).kubeconfig


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (two terminals, parallel test sessions)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_state(layout: Layout) -> dict[str, Any]:
    try:
        return dict(json.loads(layout.state_file.read_text()))
    except (OSError, ValueError):
        return {}


# Components that run this checkout's Python (the rest are binaries): a cluster left running by older code is
# restarted in them, or a test of changed proxy or agent code would run against the old processes.
PYTHON_COMPONENTS = ("node-agent", "dataplane")


def code_fingerprint() -> str:
    """The content of the Python the node agent and the data plane run (this package and the operator's modules
    it imports), so that `up` can tell a cluster started from other code."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in sorted([*here.glob("*.py"), here.parents[1] / "operator" / "localattn_operator" / "quantity.py"]):
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _write_state(layout: Layout, state: dict[str, Any]) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(layout.state_file)


PORT_OWNER = {
    "etcd_client": "etcd",
    "etcd_peer": "etcd",
    "apiserver": "kube-apiserver",
    "controller_manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
    "prometheus": "prometheus",
}


def _wait(ok: Callable[[], bool], what: str, record: procs.ProcRecord | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        if record is not None and not procs.alive(record):
            raise ClusterError(f"{what}: process exited\n{_log_tail(record)}")
        time.sleep(0.2)
    raise ClusterError(f"{what}: not ready after {timeout:.0f}s\n{_log_tail(record) if record else ''}")


def _log_tail(record: procs.ProcRecord, lines: int = 25) -> str:
    try:
        return "\n".join(Path(record.log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _running(state_dir: Path) -> dict[str, procs.ProcRecord]:
    return {name: r for name, r in procs.load_all(state_dir).items() if procs.alive(r)}


def up(
    state_dir: Path | str | None = None,
    nodes: int = 2,
    gpus_per_node: int = 4,
    node_mode: str = "simulate",
    *,
    use_existing: bool = True,
    agent_on_existing: bool = False,
    timeout: float = 120.0,
    models: tuple[str, ...] = modelstore.MODELS,
) -> ClusterInfo:
    """Make sure a cluster runs and return how to reach it (`started=False` when nothing had to start).

    `node_mode="process"` runs pods as local processes and first links `models` into the model store
    (`modelstore`: the example PersistentVolume's hostPath)."""
    sd = resolve_state_dir(state_dir)
    spec = NodeSpec(nodes=nodes, gpus_per_node=gpus_per_node, mode=node_mode)
    if node_mode == "process":
        modelstore.prepare(sd, models)
    with _locked(sd):
        layout = Layout(sd)
        env_kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        if (
            use_existing
            and env_kubeconfig
            and Path(env_kubeconfig).absolute() != layout.kubeconfig
            and kc.answers(env_kubeconfig)
        ):
            return _use_external(layout, Path(env_kubeconfig), spec if agent_on_existing else None, timeout)
        return _up_local(layout, spec, timeout)


def _use_external(layout: Layout, kubeconfig: Path, spec: NodeSpec | None, timeout: float) -> ClusterInfo:
    server = kc.server_of(kubeconfig) or ""
    started = False
    running = _running(layout.state_dir)
    if set(running) - {"node-agent"}:
        # This state dir holds a local cluster of ours: leave its processes and records alone.
        return ClusterInfo(
            kubeconfig=kubeconfig, server=server, state_dir=layout.state_dir, started=False, external=True
        )
    if spec is not None and "node-agent" not in running:
        argv = node_agent_argv(kubeconfig, spec, layout.state_dir)
        record = procs.start(layout.state_dir, "node-agent", argv, _agent_env())
        running["node-agent"] = record
        _wait(lambda: health.nodes_ready(kubeconfig, spec.names()), "node agent", record, timeout)
        started = True
    _write_state(
        layout,
        {
            "external": True,
            "kubeconfig": str(kubeconfig),
            "server": server,
            "nodes": spec.names() if spec else [],
        },
    )
    return ClusterInfo(
        kubeconfig=kubeconfig,
        server=server,
        state_dir=layout.state_dir,
        started=started,
        external=True,
        nodes=tuple(spec.names()) if spec else (),
        pids={n: r.pid for n, r in running.items()},
    )


def _up_local(layout: Layout, spec: NodeSpec, timeout: float) -> ClusterInfo:
    sd = layout.state_dir
    state = _read_state(layout)
    running = _running(sd)
    if state.get("external"):
        # A node agent left serving a $KUBECONFIG cluster from this state dir talks to the wrong apiserver.
        if running.pop("node-agent", None) is not None:
            procs.stop(sd, "node-agent")
        state = {}
    code = code_fingerprint()
    if state.get("code") != code:  # started by other code: its Python components restart on this code
        for name in PYTHON_COMPONENTS:
            if running.pop(name, None) is not None:
                procs.stop(sd, name)
    previous_ports = state.get("ports", {})
    if set(running) == set(COMPONENTS) and previous_ports:
        ports = Ports(**previous_ports)
        if health.apiserver_ready(layout, ports):
            return _info(layout, ports, running, started=False, names=state.get("nodes", spec.names()))

    assets = find_assets()
    pki = ensure_pki(layout.pki)
    keep = {p for p, owner in PORT_OWNER.items() if owner in running}
    ports = pick_ports(previous_ports, keep)
    # A component whose endpoint moved invalidates the running processes that talk to it.
    for port_name, owner in PORT_OWNER.items():
        if previous_ports.get(port_name) not in (None, getattr(ports, port_name)):
            for dependent in DEPENDENTS.get(owner, ()):
                if running.pop(dependent, None) is not None:
                    procs.stop(sd, dependent)
    server = server_url(ports)
    kc.write(layout.kubeconfig, kc.render(server, pki.ca_crt, pki.tokens["admin"]))
    for identity in ("controller-manager", "scheduler", "node-agent"):
        config = kc.render(server, pki.ca_crt, pki.tokens[identity], user=identity)
        kc.write(layout.component_kubeconfig(identity), config)
    names = spec.names() if "node-agent" not in running else state.get("nodes", spec.names())
    _write_state(
        layout,
        {
            "external": False,
            "ports": ports.as_dict(),
            "server": server,
            "nodes": names,
            "bin": {"apiserver": str(assets.kube_apiserver)},
            "code": code,
        },
    )

    started = False
    ca_context = ssl.create_default_context(cafile=str(pki.ca_crt))
    if "etcd" not in running:
        layout.etcd_data.mkdir(mode=0o700, exist_ok=True)
        record = running["etcd"] = procs.start(sd, "etcd", etcd_argv(assets, layout, ports))
        _wait(lambda: health.http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), "etcd", record, timeout)
        started = True
    if "kube-apiserver" not in running:
        record = running["kube-apiserver"] = procs.start(
            sd, "kube-apiserver", apiserver_argv(assets, layout, ports)
        )
        _wait(lambda: health.apiserver_ready(layout, ports, ca_context), "kube-apiserver", record, timeout)
        started = True
    health.ensure_default_namespace(layout.kubeconfig)
    gatewayschema.ensure_installed(layout.kubeconfig)  # the HTTPRoute API the proxy and the gatewayAPI router use
    if "kube-controller-manager" not in running:
        argv = controller_manager_argv(assets, layout, ports)
        running["kube-controller-manager"] = procs.start(sd, "kube-controller-manager", argv)
        started = True
    if "kube-scheduler" not in running:
        running["kube-scheduler"] = procs.start(sd, "kube-scheduler", scheduler_argv(assets, layout, ports))
        started = True
    if "node-agent" not in running:
        argv = node_agent_argv(layout.component_kubeconfig("node-agent"), spec, sd)
        running["node-agent"] = procs.start(sd, "node-agent", argv, _agent_env())
        started = True
    insecure = health.insecure_context()
    for name, port in (
        ("kube-controller-manager", ports.controller_manager),
        ("kube-scheduler", ports.scheduler),
    ):
        url = f"https://127.0.0.1:{port}/healthz"
        _wait(lambda url=url: health.http_ok(url, insecure), name, running[name], timeout)  # type: ignore[misc]
    _wait(lambda: health.nodes_ready(layout.kubeconfig, names), "node agent", running["node-agent"], timeout)
    started = _start_data_plane(layout, ports, running, timeout) or started
    return _info(layout, ports, running, started=started, names=names)


def _start_data_plane(layout: Layout, ports: Ports, running: dict[str, procs.ProcRecord], timeout: float) -> bool:
    """HAProxy (the service proxy), Prometheus, and the controller feeding both; True if any started."""
    from localattn_dev import haproxycfg, prometheus, serviceproxy

    sd = layout.state_dir
    missing = [b for b in (haproxycfg.HAPROXY, prometheus.PROMETHEUS) if not Path(b).exists()]
    if missing:
        raise ClusterError(f"{' and '.join(missing)} missing: `make setup` installs Debian's haproxy and prometheus")
    proxy, prom = haproxycfg.ProxyFiles(sd), prometheus.PrometheusFiles(sd)
    serviceproxy.initial_config(proxy)
    if serviceproxy.write_atomic(prom.config, prometheus.config(prom)) and "prometheus" in running:
        health.http_ok(f"{prometheus.url(ports.prometheus)}/-/reload", method="POST")  # a config of an older version
    if not prom.pods_file.exists():
        serviceproxy.write_atomic(prom.pods_file, "[]\n")
    started = False
    if "haproxy" not in running:
        running["haproxy"] = procs.start(sd, "haproxy", haproxycfg.haproxy_argv(proxy))
        started = True
    if "prometheus" not in running:
        running["prometheus"] = procs.start(sd, "prometheus", prometheus.prometheus_argv(prom, ports.prometheus))
        started = True
    if "dataplane" not in running:
        running["dataplane"] = procs.start(sd, "dataplane", dataplane_argv(layout), _agent_env())
        started = True
    _wait(lambda: serviceproxy.worker_pid(proxy) is not None, "haproxy", running["haproxy"], timeout)
    ready = f"{prometheus.url(ports.prometheus)}/-/ready"
    _wait(lambda: health.http_ok(ready), "prometheus", running["prometheus"], timeout)
    return started


def _info(
    layout: Layout, ports: Ports, running: dict[str, procs.ProcRecord], started: bool, names: list[str]
) -> ClusterInfo:
    return ClusterInfo(
        kubeconfig=layout.kubeconfig,
        server=server_url(ports),
        state_dir=layout.state_dir,
        started=started,
        nodes=tuple(names),
        ports=ports.as_dict(),
        pids={n: r.pid for n, r in running.items()},
    )


def _agent_env() -> dict[str, str]:
    """The agent imports this package: make it importable even when the project is not pip-installed."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def down(state_dir: Path | str | None = None, purge: bool = False) -> list[str]:
    """Stop the processes recorded in the state dir (newest layer first); return the names that were running.

    `purge` also deletes the cluster's files (etcd data, PKI, kubeconfigs, logs) — never anything else.
    """
    sd = resolve_state_dir(state_dir)
    if not sd.exists():
        return []
    stopped: list[str] = []
    with _locked(sd):
        for name in reversed(COMPONENTS):
            if procs.stop(sd, name):
                stopped.append(name)
        # Pod processes of process mode (the agent leaves them running for its successor): every group.
        if pods := processruntime.stop_all(sd):
            stopped.append(f"{len(pods)} pod process(es)")
        if purge:
            layout = Layout(sd)
            for path in (layout.pki, layout.etcd_data, sd / "kubeconfigs", sd / "logs", procs.run_dir(sd),
                         sd / "proxy", sd / "prometheus", sd / "pods", sd / "hostpath"):  # fmt: skip
                shutil.rmtree(path, ignore_errors=True)
            for path in (layout.kubeconfig, layout.state_file):
                path.unlink(missing_ok=True)
    if purge:
        (sd / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sd.rmdir()
    return stopped


def stop_component(state_dir: Path | str | None, name: str, *, graceful: bool = True) -> bool:
    """Stop one component of a local cluster (chaos tests: the apiserver or etcd going away under a running
    operator); `up` starts it again, on its recorded port while that stays free. `graceful=False` sends
    SIGKILL right after SIGTERM (a crash). True if it ran."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r} (one of {', '.join(COMPONENTS)})")
    sd = resolve_state_dir(state_dir)
    with _locked(sd):
        return procs.stop(sd, name, timeout=10.0 if graceful else 0.0)


def status(state_dir: Path | str | None = None) -> dict[str, Any]:
    """What runs: each component's PID and liveness, the server, whether it answers, and the nodes' readiness."""
    sd = resolve_state_dir(state_dir)
    layout = Layout(sd)
    state = _read_state(layout)
    records = procs.load_all(sd) if sd.exists() else {}
    components = {
        name: {"pid": r.pid, "running": procs.alive(r), "log": r.log} for name, r in records.items()
    }
    kubeconfig = Path(state["kubeconfig"]) if state.get("external") else layout.kubeconfig
    result: dict[str, Any] = {
        "state_dir": str(sd),
        "kubeconfig": str(kubeconfig),
        "server": state.get("server"),
        "external": bool(state.get("external")),
        "ports": state.get("ports", {}),
        "components": components,
        "ready": False,
        "nodes": {},
    }
    if state.get("external"):
        result["ready"] = kc.answers(kubeconfig)
    elif state.get("ports"):
        result["ready"] = health.apiserver_ready(layout, Ports(**state["ports"]))
    if result["ready"]:
        result["nodes"] = {name: health.nodes_ready(kubeconfig, [name]) for name in state.get("nodes", [])}
    return result
