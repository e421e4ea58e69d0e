"""Keep the running HAProxy equal to the cluster's Services and their ready endpoints (I/O).

Decisions come from the pure modules (`proxymodel`: what to serve; `proxyslots`: runtime commands or a
reload; `haproxycfg`: the config text); this module talks to HAProxy's admin socket (runtime API) and
master socket (seamless reload) and writes the files: the config (always the live state, so a restarted
HAProxy starts where the runtime API left it), the address allocation and the Service URLs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localattn_dev import haproxycfg, proxymodel, proxyslots, routemodel
from localattn_dev.haproxycfg import ProxyFiles
from localattn_dev.proxymodel import EndpointGroup, Frontend

log = logging.getLogger("localattn.serviceproxy")


class HAProxyError(RuntimeError):
    pass


def socket_command(path: Path, command: str, timeout: float = 5.0) -> str:
    """One command on a HAProxy CLI socket (admin or master); the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def worker_pid(files: ProxyFiles) -> int | None:
    """PID of the worker answering the admin socket (changes on a reload); None if none answers."""
    try:
        info = socket_command(files.admin_socket, "show info", timeout=2.0)
    except OSError:
        return None
    for line in info.splitlines():
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None


def write_atomic(path: Path, text: str) -> bool:
    """Write `text` to `path` through a rename (readers never see half a file); False if unchanged."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def bindable(address: str, ports: Sequence[int]) -> bool:
    """Nobody listens on `address` at any of `ports` (another dev cluster's HAProxy, say)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
    return True


def unprivileged_port_start() -> int:
    """Lowest port this process may bind (root: any)."""
    if os.geteuid() == 0:
        return 1
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def initial_config(files: ProxyFiles) -> None:
    """A config HAProxy can start with before the first sync (no Services yet; an existing one is kept)."""
    if not files.config.exists():
        write_atomic(files.config, haproxycfg.render(files, [], {}))


class ServiceProxy:
    """The sync step: desired frontends from a snapshot of Services, EndpointSlices, HTTPRoutes (and the
    InferencePools and pods behind them), applied to HAProxy."""

    def __init__(self, files: ProxyFiles, binary: str = haproxycfg.HAPROXY) -> None:
        self.files = files
        self.binary = binary
        self.running: list[Frontend] | None = None  # unknown until the first sync (which reloads)
        self.slots: dict[str, proxyslots.Slots] = {}
        self.min_port = unprivileged_port_start()
        self.reloads = 0

    def _addresses(self, services: Mapping[str, Sequence[int]]) -> dict[str, str]:
        try:
            previous = dict(json.loads(self.files.addresses.read_text()))
        except (OSError, ValueError):
            previous = {}
        allocated = proxymodel.allocate_addresses(previous, services, bindable)
        if allocated != previous:
            write_atomic(self.files.addresses, json.dumps(allocated, indent=1, sort_keys=True) + "\n")
        return allocated

    def sync(
        self,
        services: Iterable[Mapping[str, Any]],
        endpoint_slices: Iterable[Mapping[str, Any]],
        splits: Mapping[str, Sequence[EndpointGroup]] | None = None,
        routes: Iterable[Mapping[str, Any]] = (),
        pools: Iterable[Mapping[str, Any]] = (),
        pods: Iterable[Mapping[str, Any]] = (),
    ) -> proxyslots.Plan:
        """`routes`: HTTPRoutes, each served on an address of its own (`routemodel`); `pools`, `pods`: the
        InferencePools their backendRefs may name, and the pods those select."""
        proxied = [s for s in services if proxymodel.proxied(s)]
        routes = list(routes)
        by_pool = {proxymodel.service_key(p): p for p in pools}
        wanted = {proxymodel.service_key(s): proxymodel.service_ports(s) for s in proxied}
        wanted.update({routemodel.route_key(r): routemodel.route_ports(r, by_pool) for r in routes})
        addresses = self._addresses(wanted)
        slices = proxymodel.slices_by_service(endpoint_slices)
        frontends = proxymodel.desired_frontends(proxied, slices, addresses, splits, self.min_port)
        by_key = {proxymodel.service_key(s): s for s in proxied}
        frontends += routemodel.route_frontends(routes, by_key, slices, addresses, self.min_port, by_pool, pods)
        desired = self._bindable(frontends)
        plan = proxyslots.plan(self.running, self.slots, desired)
        text = haproxycfg.render(self.files, desired, plan.slots)
        if plan.reload:
            self._reload(text)
        elif plan.commands:
            self._apply(plan.commands, text)
        write_atomic(self.files.urls, json.dumps(proxymodel.service_urls(desired), indent=1, sort_keys=True) + "\n")
        self.running, self.slots = desired, plan.slots
        return plan

    def _bindable(self, desired: list[Frontend]) -> list[Frontend]:
        """Leave out a *new* listener someone else already holds (one busy address:port would fail the whole
        reload, and with it every other Service's update)."""
        ours = self._listening()
        kept = []
        for f in desired:
            if (f.bind_address, f.port) in ours or bindable(f.bind_address, [f.port]):
                kept.append(f)
            else:
                log.warning("%s: %s:%d is in use by another process; not proxied", f.service, f.bind_address, f.port)
        return kept

    def _listening(self) -> set[tuple[str, int]]:
        """The listeners HAProxy holds: those of the config on disk, which always describes the live state
        (also right after this controller restarted, when `self.running` is still unknown)."""
        try:
            text = self.files.config.read_text()
        except OSError:
            return set()
        found = re.findall(r"^\s*bind (\d+\.\d+\.\d+\.\d+):(\d+)\s*$", text, flags=re.MULTILINE)
        return {(address, int(port)) for address, port in found}

    def _apply(self, commands: list[str], text: str) -> None:
        answer = socket_command(self.files.admin_socket, ";".join(commands))
        failed = [line for line in answer.splitlines() if line.startswith(("No such", "Unknown", "Require", "Invalid"))]
        if failed:
            raise HAProxyError(f"runtime API refused: {failed}")
        write_atomic(self.files.config, text)
        log.info("runtime update: %d commands", len(commands))

    def _reload(self, text: str) -> None:
        candidate = self.files.config.with_name("haproxy.cfg.new")
        candidate.write_text(text)
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(candidate)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise HAProxyError(f"generated config rejected: {check.stdout}{check.stderr}")
        os.replace(candidate, self.files.config)
        before = worker_pid(self.files)
        socket_command(self.files.master_socket, "reload")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = worker_pid(self.files)
            if pid is not None and pid != before:
                self.reloads += 1
                log.info("reloaded: worker %s -> %s", before, pid)
                return
            time.sleep(0.02)
        raise HAProxyError("reload: no new worker answered within 10 s")
