"""Server slots of each HAProxy backend and the runtime-API commands that move them (pure).

HAProxy cannot change a backend's server *list* without a reload, but it can re-point, re-weight, enable
and disable existing servers through its admin socket at once and without touching connections in flight.
So each backend has a fixed number of slots (`s1..sN`); an endpoint change becomes `set server ... addr`,
`set weight` and `set server ... state ready|maint` on slots, and only a change of the frontends (a
Service added or removed, a port changed) or a backend outgrowing its slots needs a (seamless) reload.

A server keeps its slot while it stays an endpoint (its connections and its place in the round robin are
untouched); a new server takes an empty slot before a just-vacated one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from localattn_dev.proxymodel import Frontend, Server

MIN_SLOTS = 8
Slots = tuple[Server | None, ...]


def slot_capacity(servers: int) -> int:
    """Slots for a backend with `servers` endpoints: a power of two with headroom, at least MIN_SLOTS."""
    capacity = MIN_SLOTS
    while capacity < servers * 2:
        capacity *= 2
    return capacity


def slot_name(index: int) -> str:
    return f"s{index + 1}"


def fresh_slots(servers: Sequence[Server]) -> Slots:
    """Slots for a backend written into a new config: the servers in order, the rest empty."""
    capacity = slot_capacity(len(servers))
    return tuple(servers) + (None,) * (capacity - len(servers))


def assign(current: Slots, desired: Sequence[Server]) -> Slots | None:
    """New slot contents for `desired`, keeping each remaining server (same address and port) in its slot;
    None when the servers do not fit (the backend needs a reload with more slots)."""
    if len(desired) > len(current):
        return None
    wanted = {(s.address, s.port): s for s in desired}
    slots: list[Server | None] = [None] * len(current)
    placed: set[tuple[str, int]] = set()
    for i, old in enumerate(current):
        if old is not None and (old.address, old.port) in wanted:
            slots[i] = wanted[(old.address, old.port)]
            placed.add((old.address, old.port))
    never_used = [i for i, old in enumerate(current) if old is None]
    vacated = [i for i, old in enumerate(current) if old is not None and slots[i] is None]
    free = iter(never_used + vacated)
    for server in desired:
        if (server.address, server.port) not in placed:
            slots[next(free)] = server
    return tuple(slots)


def runtime_commands(backend: str, current: Slots, new: Slots) -> list[str]:
    """Admin-socket commands turning `current` into `new`: new and changed servers first, removals last,
    so a backend never has fewer ready servers than it needs during the change."""
    enable: list[str] = []
    disable: list[str] = []
    for i, (old, server) in enumerate(zip(current, new, strict=True)):
        target = f"{backend}/{slot_name(i)}"
        if server is None:
            if old is not None:
                disable.append(f"set server {target} state maint")
            continue
        if old is None or (old.address, old.port) != (server.address, server.port):
            enable += [
                f"set server {target} addr {server.address} port {server.port}",
                f"set weight {target} {server.weight}",
                f"set server {target} state ready",
            ]
        elif old.weight != server.weight:
            enable.append(f"set weight {target} {server.weight}")
    return enable + disable


@dataclass(frozen=True)
class Plan:
    """What one sync does: either runtime commands on the running config, or a reload with new slots."""

    reload: bool
    slots: dict[str, Slots]  # backend name -> slots after the change
    commands: list[str]


def frontend_shape(frontends: Sequence[Frontend]) -> tuple[tuple[str, str, int, str], ...]:
    """What a reload is needed for: the set of listeners and their modes (servers are runtime-changeable)."""
    return tuple(sorted((f.name, f.bind_address, f.port, f.mode) for f in frontends))


def plan(
    running: Sequence[Frontend] | None, slots: Mapping[str, Slots], desired: Sequence[Frontend]
) -> Plan:
    """Compare what HAProxy runs (`running` frontends with `slots`; None: nothing known, e.g. at start)
    with `desired`; runtime commands when only servers changed and they fit, else a reload."""
    if running is None or frontend_shape(running) != frontend_shape(desired):
        return Plan(True, {f.name: _resized(slots.get(f.name), f.servers) for f in desired}, [])
    new_slots: dict[str, Slots] = {}
    commands: list[str] = []
    for f in desired:
        current = slots.get(f.name) or fresh_slots(())
        assigned = assign(current, f.servers)
        if assigned is None:
            return Plan(True, {g.name: _resized(slots.get(g.name), g.servers) for g in desired}, [])
        new_slots[f.name] = assigned
        commands += runtime_commands(f.name, current, assigned)
    return Plan(False, new_slots, commands)


def _resized(current: Slots | None, servers: Sequence[Server]) -> Slots:
    """Slots for a reload: keep each server's slot where it fits, grown to the needed capacity."""
    capacity = slot_capacity(len(servers))
    if current is not None and len(current) >= capacity:
        assigned = assign(current, servers)
        if assigned is not None:
            return assigned
    base: Slots = tuple(current or ()) + (None,) * max(0, capacity - len(current or ()))
    return assign(base, servers) or fresh_slots(servers)
