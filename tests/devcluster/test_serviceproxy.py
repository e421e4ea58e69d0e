"""The service proxy's pure parts: desired frontends from Services and EndpointSlices, address allocation,
slots, runtime commands, the HAProxy config."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from localattn_dev import haproxycfg, proxyslots
from localattn_dev.proxymodel import (
    MAX_WEIGHT,
    EndpointGroup,
    Frontend,
    Server,
    allocate_addresses,
    desired_frontends,
    service_urls,
    slices_by_service,
)


def service(name: str, ports: list[dict[str, Any]], ns: str = "ns", type_: str = "ClusterIP") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"type": type_, "ports": ports}}


def endpoint_slice(
    service: str, ready: list[str], ports: dict[str, int], not_ready: tuple[str, ...] = (), ns: str = "ns",
    suffix: str = "abcde", ready_unknown: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    endpoints = [{"addresses": [ip], "conditions": {"ready": True}} for ip in ready]
    endpoints += [{"addresses": [ip], "conditions": {"ready": False}} for ip in not_ready]
    endpoints += [{"addresses": [ip], "conditions": {}} for ip in ready_unknown]
    return {
        "metadata": {"name": f"{service}-{suffix}", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": name, "port": port, "protocol": "TCP"} for name, port in ports.items()],
    }


HTTP = {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}


def test_backends_are_the_ready_loopback_addresses_of_the_matching_port() -> None:
    svc = service("llm", [HTTP, {"name": "metrics", "port": 9100, "protocol": "TCP"}])
    slices = slices_by_service([
        endpoint_slice("llm", ["127.1.0.2", "10.0.0.7"], {"http": 8001, "metrics": 9101},  # 10.x: never
                       not_ready=("127.1.0.3",)),
        endpoint_slice("llm", [], {"http": 8001, "metrics": 9101}, suffix="fghij", ready_unknown=("127.1.1.2",)),
        endpoint_slice("other", ["127.1.0.9"], {"http": 8001}),
    ])  # fmt: skip
    frontends = desired_frontends([svc], slices, {"ns/llm": "127.2.0.1"})
    by_port = {f.port: f for f in frontends}
    assert [(s.address, s.port) for s in by_port[8000].servers] == [("127.1.0.2", 8001), ("127.1.1.2", 8001)]
    assert [(s.address, s.port) for s in by_port[9100].servers] == [("127.1.0.2", 9101), ("127.1.1.2", 9101)]
    assert {s.weight for s in by_port[8000].servers} == {MAX_WEIGHT}
    assert (by_port[8000].mode, by_port[9100].mode) == ("http", "tcp")
    assert {f.bind_address for f in frontends} == {"127.2.0.1"}
    assert service_urls(frontends) == {"ns/llm": ["http://127.2.0.1:8000", "http://127.2.0.1:9100"]}


def test_skipped_services_and_ports() -> None:
    services = [
        service("kubernetes", [{"port": 443}], ns="default"),
        service("ext", [{"port": 80}], type_="ExternalName"),
        service("udp", [{"port": 53, "protocol": "UDP"}, {"name": "low", "port": 80}, {"name": "hi", "port": 8080}]),
    ]
    addresses = {"default/kubernetes": "127.2.0.1", "ns/ext": "127.2.0.2", "ns/udp": "127.2.0.3"}
    frontends = desired_frontends(services, {}, addresses, min_port=1024)
    assert [(f.service, f.port) for f in frontends] == [("ns/udp", 8080)]
    assert frontends[0].servers == ()  # no Endpoints yet: a frontend with no server (connections refused)


def test_address_allocation_is_stable_and_skips_busy_addresses() -> None:
    first = allocate_addresses({}, {"ns/b": [80], "ns/a": [80]})
    assert first == {"ns/a": "127.2.0.1", "ns/b": "127.2.0.2"}
    # A later Service never moves an earlier one; a deleted Service keeps its address for a re-creation.
    second = allocate_addresses(first, {"ns/0": [80], "ns/b": [80]})
    assert second == {**first, "ns/0": "127.2.0.3"}
    busy = {("127.2.0.4", 80)}
    third = allocate_addresses(second, {"x/y": [80]}, free=lambda a, ports: all((a, p) not in busy for p in ports))
    assert third["x/y"] == "127.2.0.5"
    assert not any(a.endswith((".0", ".255")) for a in allocate_addresses({}, {f"n/{i}": [1] for i in range(600)}).values())


def test_weighted_groups_split_by_group_not_by_replica_count() -> None:
    stable = service("stable", [HTTP])
    canary = service("canary", [HTTP])
    route = service("route", [HTTP])
    eps = slices_by_service([
        endpoint_slice("stable", [f"127.1.0.{i}" for i in (2, 3, 4)], {"http": 8000}),
        endpoint_slice("canary", ["127.1.1.2"], {"http": 8000}),
    ])  # fmt: skip
    splits = {"ns/route": [EndpointGroup("ns/stable", 90), EndpointGroup("ns/canary", 10)]}
    addresses = allocate_addresses({}, {"ns/route": [8000], "ns/stable": [8000], "ns/canary": [8000]})
    frontends = {f.service: f for f in desired_frontends([stable, canary, route], eps, addresses, splits)}
    weights = {s.address: s.weight for s in frontends["ns/route"].servers}
    canary_share = weights["127.1.1.2"] / sum(weights.values())
    assert abs(canary_share - 0.10) < 0.01
    assert len({weights[f"127.1.0.{i}"] for i in (2, 3, 4)}) == 1
    # A zero-weight group keeps its servers (ready to take traffic at once) at weight 0.
    zero = {"ns/route": [EndpointGroup("ns/stable", 100), EndpointGroup("ns/canary", 0)]}
    servers = {f.service: f for f in desired_frontends([route], eps, addresses, zero)}["ns/route"].servers
    assert {s.address: s.weight for s in servers}["127.1.1.2"] == 0


def fe(name: str, *servers: tuple[str, int], weight: int = MAX_WEIGHT, port: int = 8000) -> Frontend:
    return Frontend(name, "ns/x", "127.2.0.1", port, "http", tuple(Server(a, p, weight) for a, p in servers))


A, B, C = ("127.1.0.2", 8000), ("127.1.0.3", 8000), ("127.1.0.4", 8000)


def test_endpoint_changes_are_runtime_commands_and_servers_keep_their_slots() -> None:
    first = proxyslots.plan(None, {}, [fe("ns.x.8000", A, B)])
    assert first.reload and first.slots["ns.x.8000"][:3] == (Server(*A), Server(*B), None)
    # B leaves, C arrives: C takes a never-used slot (B's slot stays quiet), A is untouched; enable first.
    second = proxyslots.plan([fe("ns.x.8000", A, B)], first.slots, [fe("ns.x.8000", A, C)])
    assert not second.reload
    assert second.slots["ns.x.8000"][:3] == (Server(*A), None, Server(*C))
    assert second.commands == [
        "set server ns.x.8000/s3 addr 127.1.0.4 port 8000",
        f"set weight ns.x.8000/s3 {MAX_WEIGHT}",
        "set server ns.x.8000/s3 state ready",
        "set server ns.x.8000/s2 state maint",
    ]
    # Only a weight changes: one command.
    third = proxyslots.plan([fe("ns.x.8000", A, C)], second.slots, [fe("ns.x.8000", A, C, weight=7)])
    assert third.commands == ["set weight ns.x.8000/s1 7", "set weight ns.x.8000/s3 7"]
    # Nothing changes: nothing to do.
    assert proxyslots.plan([fe("ns.x.8000", A, C)], second.slots, [fe("ns.x.8000", A, C)]).commands == []


def test_new_frontends_and_outgrown_slots_reload_keeping_slots() -> None:
    first = proxyslots.plan(None, {}, [fe("ns.x.8000", A, B)])
    added = proxyslots.plan([fe("ns.x.8000", A, B)], first.slots, [fe("ns.x.8000", A, B), fe("ns.y.80", C, port=80)])
    assert added.reload and added.slots["ns.x.8000"] == first.slots["ns.x.8000"]
    many = [(f"127.1.0.{i}", 8000) for i in range(2, 2 + proxyslots.MIN_SLOTS + 1)]
    grown = proxyslots.plan([fe("ns.x.8000", A, B)], first.slots, [fe("ns.x.8000", *many)])
    assert grown.reload and len(grown.slots["ns.x.8000"]) >= len(many) * 2
    assert grown.slots["ns.x.8000"][:2] == (Server(*A), Server(*B))


def test_assign_never_moves_a_remaining_server() -> None:
    slots: proxyslots.Slots = (Server(*A), None, Server(*B), Server(*C))
    new = proxyslots.assign(slots, [Server(*C), Server("127.1.0.9", 8000)])
    assert new == (None, Server("127.1.0.9", 8000), None, Server(*C))
    assert proxyslots.assign(slots, [Server(f"127.1.1.{i}", 1) for i in range(5)]) is None


@pytest.mark.parametrize("servers", [(), (A, B)])
def test_rendered_config_is_valid_for_the_real_haproxy(tmp_path: Path, servers: tuple[tuple[str, int], ...]) -> None:
    files = haproxycfg.ProxyFiles(tmp_path)
    frontends = [fe("ns.x.8000", *servers), Frontend("ns.t.5432", "ns/t", "127.2.0.2", 5432, "tcp", ())]
    text = haproxycfg.render(files, frontends, proxyslots.plan(None, {}, frontends).slots)
    assert "listen ns.x.8000" in text and "bind 127.2.0.1:8000" in text and "mode tcp" in text
    assert "expose-fd listeners" in text and "level admin" in text
    for address, port in servers:
        assert f"{address}:{port} weight {MAX_WEIGHT}\n" in text
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run([haproxycfg.HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    argv = haproxycfg.haproxy_argv(files)
    assert argv[1:3] == ["-W", "-S"] and argv[-1] == str(files.config)
