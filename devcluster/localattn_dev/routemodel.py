"""HTTPRoutes as service-proxy frontends (pure): the dev cluster's stand-in for a Gateway.

There is no Gateway controller here, so each HTTPRoute gets a loopback address of its own (like a Service,
from the same 127.2.x.y allocation) with one HTTP frontend whose servers are the *ready* endpoints of its
backendRefs' Services, weighted so that each backendRef gets weight/sum(weights) of the requests whatever
the number of pods behind it (`proxymodel.server_weights`). That is what the gatewayAPI traffic router's
weights do on a real Gateway, so the router is exercised for real.

The subset honoured (docs/devcluster.md): the route's first rule with backendRefs (matches, filters,
hostnames and parentRefs are not evaluated: every request to the route's address goes to that rule);
backendRefs of kind Service (group "") in the route's own namespace (a cross-namespace ref needs a
ReferenceGrant, which the dev cluster does not have), with a `port`; `weight` defaulting to 1. The frontend
listens on the first backendRef's port. A backendRef whose Service has no ready endpoint (or does not exist)
gets no traffic: its share goes to the others (a real Gateway would answer 500/503 for that share).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from localattn_dev.proxymodel import EndpointGroup, Frontend, ready_targets, server_weights, service_key

KEY_PREFIX = "httproute/"  # "httproute/<ns>/<name>": never a Service key ("<ns>/<name>")
DEFAULT_WEIGHT = 1  # Gateway API: a backendRef without `weight` weighs 1


def route_key(route: Mapping[str, Any]) -> str:
    return KEY_PREFIX + service_key(route)


@dataclass(frozen=True)
class RouteBackend:
    """One honoured backendRef: a Service ("<ns>/<name>"), its port number, its weight."""

    service: str
    port: int
    weight: int


def route_backends(route: Mapping[str, Any]) -> tuple[list[RouteBackend], list[str]]:
    """The backendRefs the proxy serves (of the first rule that has any) and why the others are not."""
    namespace = (route.get("metadata") or {}).get("namespace", "default")
    rules = [r for r in (route.get("spec") or {}).get("rules") or [] if r.get("backendRefs")]
    if not rules:
        return [], ["no rule with backendRefs"]
    backends, skipped = [], []
    for ref in rules[0]["backendRefs"]:
        name = str(ref.get("name") or "")
        if (ref.get("kind") or "Service") != "Service" or (ref.get("group") or "") != "":
            skipped.append(f"{name}: kind {ref.get('kind')} of group {ref.get('group')!r} is not proxied")
        elif ref.get("namespace") not in (None, namespace):
            skipped.append(f"{name}: namespace {ref['namespace']} (a cross-namespace ref needs a ReferenceGrant)")
        elif not ref.get("port"):
            skipped.append(f"{name}: no port (required for a Service)")
        else:
            weight = int(ref.get("weight", DEFAULT_WEIGHT))
            backends.append(RouteBackend(f"{namespace}/{name}", int(ref["port"]), weight))
    return backends, skipped


def route_ports(route: Mapping[str, Any]) -> list[int]:
    """The port the route's frontend listens on (the first backendRef's), for the address allocation."""
    backends, _ = route_backends(route)
    return [backends[0].port] if backends else []


def _port_name(service: Mapping[str, Any] | None, number: int) -> str | None:
    for port in ((service or {}).get("spec") or {}).get("ports") or []:
        if int(port.get("port", 0)) == number and port.get("protocol", "TCP") == "TCP":
            return str(port.get("name") or "")
    return None


def route_frontends(
    routes: Iterable[Mapping[str, Any]],
    services: Mapping[str, Mapping[str, Any]],
    slices: Mapping[str, Sequence[Mapping[str, Any]]],
    addresses: Mapping[str, str],
    min_port: int = 1,
) -> list[Frontend]:
    """One HTTP frontend per HTTPRoute with an address and at least one honoured backendRef.

    `services`: "<ns>/<name>" -> Service; `slices`: as `proxymodel.slices_by_service`. A backendRef's port
    number selects the Service port, whose *name* selects the EndpointSlices' port (as kube-proxy does)."""
    frontends = []
    for route in sorted(routes, key=route_key):
        key = route_key(route)
        backends, _ = route_backends(route)
        address = addresses.get(key)
        if not backends or address is None or backends[0].port < min_port:
            continue
        groups = []
        for b in backends:
            port_name = _port_name(services.get(b.service), b.port)
            targets = ready_targets(slices.get(b.service) or (), port_name) if port_name is not None else []
            if targets:
                groups.append((EndpointGroup(b.service, b.weight), targets))
        namespace, name = key.removeprefix(KEY_PREFIX).split("/", 1)
        port = backends[0].port
        frontends.append(Frontend(name=f"httproute.{namespace}.{name}.{port}", service=key, bind_address=address,
                                  port=port, mode="http", servers=tuple(server_weights(groups))))
    return frontends
