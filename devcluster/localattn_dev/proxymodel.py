"""What the dev cluster's service proxy should serve, computed from Services and EndpointSlices (pure).

There is no kube-proxy here and Service ClusterIPs (10.0.0.x) route nowhere, so every Service gets a
loopback address of its own (127.2.x.y, one per Service, its own port numbers) and each of its ports becomes
a proxy frontend whose backend servers are the Service's *ready* endpoint addresses. The HAProxy specifics
(config text, slots, runtime commands) live in `haproxycfg` and `proxyslots`; this module knows Kubernetes.

Weights: a frontend's backend is fed by one or more *endpoint groups* (by default the Service's own
endpoints, weight 1). A split (for the progressive-delivery router: an HTTPRoute's weighted backendRefs)
replaces that with several Services' endpoints, each group with its weight; each server then gets the
share of its group divided by the group's size, so traffic follows the group weights whatever the replica
counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ADDRESS_NETWORK = ipaddress.IPv4Network("127.2.0.0/16")
MAX_WEIGHT = 256  # HAProxy's server weight range is 0..256
# Protocol-prefixed port names (Istio's convention) and appProtocol say a port speaks HTTP: those frontends
# balance per request (keep-alive clients spread over the pods); anything else is proxied as plain TCP.
HTTP_PORT_NAMES = ("http", "http2", "grpc")
HTTP_APP_PROTOCOLS = ("http", "https", "h2c", "kubernetes.io/h2c", "grpc")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SKIPPED_SERVICES = frozenset({"default/kubernetes"})  # the apiserver itself: reached directly, never proxied


@dataclass(frozen=True, order=True)
class Server:
    """One backend server: an endpoint address and port, with its share of the traffic."""

    address: str
    port: int
    weight: int = MAX_WEIGHT


@dataclass(frozen=True)
class Frontend:
    """One Service port: where clients connect and which servers answer."""

    name: str  # "<namespace>.<service>.<port>": unique, and a valid HAProxy proxy name
    service: str  # "<namespace>/<name>"
    bind_address: str
    port: int
    mode: str  # "http" or "tcp"
    servers: tuple[Server, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class EndpointGroup:
    """A weighted source of servers for one frontend: a Service's ready endpoints."""

    service: str
    weight: int = 1


def service_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


def proxied(service: Mapping[str, Any]) -> bool:
    """Services the proxy serves: not ExternalName, not the apiserver's own `default/kubernetes`."""
    return (service.get("spec") or {}).get("type") != "ExternalName" and service_key(
        service
    ) not in SKIPPED_SERVICES


def allocate_addresses(
    previous: Mapping[str, str],
    services: Mapping[str, Sequence[int]],
    free: Callable[[str, Sequence[int]], bool] = lambda address, ports: True,
) -> dict[str, str]:
    """One 127.2.x.y per Service (`services`: key -> its port numbers). Earlier allocations are kept (also
    for Services gone meanwhile, so a Service recreated under its name finds its address again); a new
    Service takes the lowest address that is unallocated and `free` for its ports (another dev cluster on
    this machine may already listen there)."""
    allocated = {key: addr for key, addr in previous.items() if ipaddress.IPv4Address(addr) in ADDRESS_NETWORK}
    used = set(allocated.values())
    hosts = (str(a) for a in ADDRESS_NETWORK.hosts() if not str(a).endswith((".0", ".255")))
    for key in sorted(set(services) - set(allocated)):
        address = next(a for a in hosts if a not in used and free(a, services[key]))
        allocated[key] = address
        used.add(address)
    return allocated


def service_ports(service: Mapping[str, Any]) -> list[int]:
    return [int(p["port"]) for p in (service.get("spec") or {}).get("ports") or [] if p.get("protocol", "TCP") == "TCP"]


def port_mode(port: Mapping[str, Any]) -> str:
    name = str(port.get("name") or "")
    app = str(port.get("appProtocol") or "").lower()
    if app in HTTP_APP_PROTOCOLS or name in HTTP_PORT_NAMES or name.startswith(tuple(f"{p}-" for p in HTTP_PORT_NAMES)):
        return "http"
    return "tcp"


def slices_by_service(slices: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """EndpointSlices grouped by the Service they belong to (label `kubernetes.io/service-name`)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            grouped.setdefault(f"{meta.get('namespace', 'default')}/{service}", []).append(s)
    return grouped


def ready_targets(slices: Sequence[Mapping[str, Any]], port_name: str) -> list[tuple[str, int]]:
    """(ip, port) of the *ready* endpoints (condition `ready` true or unknown, as kube-proxy reads it)
    serving the Service port named `port_name` (the EndpointSlice controller names endpoint ports after
    the Service ports). Only loopback addresses: the dev cluster never sends traffic anywhere else."""
    targets: list[tuple[str, int]] = []
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        ports = [
            int(p["port"]) for p in s.get("ports") or []
            if str(p.get("name") or "") == port_name and p.get("protocol", "TCP") == "TCP" and p.get("port")
        ]  # fmt: skip
        for endpoint in s.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for ip in endpoint.get("addresses") or []:
                if is_loopback(str(ip)):
                    targets.extend((str(ip), port) for port in ports)
    return sorted(set(targets))


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def integer_weights(shares: Sequence[float], limit: int = MAX_WEIGHT) -> list[int]:
    """HAProxy server weights (integers 0..`limit`) whose proportions come closest to `shares`.

    A share of 0 (or less) is weight 0: that server gets no traffic. Every positive share gets at least 1,
    so a small share is never rounded away (it may be served a little above its share instead). Among the
    scales 1..`limit` for the heaviest server, the one with the least total deviation wins (the largest on a
    tie), so a ratio HAProxy can express exactly (90:10 as 252:28) is served exactly; what the rounding
    leaves is what `served_shares` reports.
    """
    total = sum(s for s in shares if s > 0)
    if total <= 0:
        return [0] * len(shares)
    wanted = [max(s, 0.0) / total for s in shares]
    top = max(wanted)
    best: list[int] = []
    best_error = float("inf")
    for scale in range(limit, 0, -1):
        weights = [0 if w <= 0 else max(1, round(scale * w / top)) for w in wanted]
        error = sum(abs(got - w) for got, w in zip(served_shares(weights), wanted, strict=True))
        if error < best_error - 1e-12:
            best, best_error = weights, error
    return best


def served_shares(weights: Sequence[int]) -> list[float]:
    """The share of requests each server gets under HAProxy's weighted round robin."""
    total = sum(weights)
    return [0.0 if total <= 0 else w / total for w in weights]


def server_weights(groups: Sequence[tuple[EndpointGroup, Sequence[tuple[str, int]]]]) -> list[Server]:
    """Servers of several weighted groups: each group's share (its weight over the sum of the weights) is
    divided among its servers, so the groups' shares hold whatever their sizes; `integer_weights` turns the
    servers' shares into HAProxy weights. Groups without servers are left out (their share goes to the rest)."""
    shares: dict[tuple[str, int], float] = {}
    for group, targets in groups:
        for target in targets:
            shares[target] = shares.get(target, 0.0) + max(group.weight, 0) / len(targets)
    ordered = sorted(shares)
    weights = integer_weights([shares[t] for t in ordered])
    return [Server(ip, port, weight) for (ip, port), weight in zip(ordered, weights, strict=True)]


def desired_frontends(
    services: Iterable[Mapping[str, Any]],
    slices: Mapping[str, Sequence[Mapping[str, Any]]],
    addresses: Mapping[str, str],
    splits: Mapping[str, Sequence[EndpointGroup]] | None = None,
    min_port: int = 1,
) -> list[Frontend]:
    """Every TCP port of every proxied Service as a frontend on the Service's address.

    `slices` maps "<ns>/<name>" to the Service's EndpointSlices (`slices_by_service`); `splits` maps a Service to the weighted groups
    that feed it instead of its own endpoints (each group's Service port with the same port *name*);
    `min_port`: ports below it are skipped (unprivileged processes cannot bind them).
    """
    splits = splits or {}
    by_key = {service_key(s): s for s in services if proxied(s)}
    frontends = []
    for key, service in sorted(by_key.items()):
        address = addresses.get(key)
        if address is None:
            continue
        for port in (service.get("spec") or {}).get("ports") or []:
            if port.get("protocol", "TCP") != "TCP" or int(port["port"]) < min_port:
                continue
            name = str(port.get("name") or "")
            groups = splits.get(key) or (EndpointGroup(key),)
            sources = [(g, ready_targets(slices.get(g.service) or (), name)) for g in groups]
            servers = server_weights([(g, t) for g, t in sources if t])
            namespace, svc = key.split("/", 1)
            frontends.append(
                Frontend(
                    name=f"{namespace}.{svc}.{int(port['port'])}",
                    service=key,
                    bind_address=address,
                    port=int(port["port"]),
                    mode=port_mode(port),
                    servers=tuple(servers),
                )
            )
    return frontends


def service_urls(frontends: Iterable[Frontend]) -> dict[str, list[str]]:
    """`"<ns>/<name>" -> ["http://127.2.x.y:PORT", ...]` for `localattn dev url` (ports in Service order)."""
    urls: dict[str, list[str]] = {}
    for f in frontends:
        urls.setdefault(f.service, []).append(f"http://{f.bind_address}:{f.port}")
    return urls
