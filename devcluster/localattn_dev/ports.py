"""Free loopback ports for the control plane, reusing a cluster's previous ports while they stay free."""

from __future__ import annotations

import socket

from localattn_dev.components import Ports


def port_free(port: int) -> bool:
    """Bindable as the Go servers bind (SO_REUSEADDR): connections in TIME_WAIT after a stop don't count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the kernel's choice; a process started soon after can bind it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_ports(previous: dict[str, int], keep: set[str]) -> Ports:
    """Reuse the recorded port of a running component (`keep`) or a still-free one; else a fresh free port."""
    held: list[socket.socket] = []
    chosen: dict[str, int] = {}
    try:
        for name in Ports.__dataclass_fields__:
            old = previous.get(name)
            if old and (name in keep or port_free(old)) and old not in chosen.values():
                chosen[name] = old
                continue
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)  # hold it so the next pick differs
            chosen[name] = s.getsockname()[1]
    finally:
        for s in held:
            s.close()
    return Ports(**chosen)
