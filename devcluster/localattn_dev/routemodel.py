"""HTTPRoutes as service-proxy frontends (pure): the dev cluster's stand-in for a Gateway.

There is no Gateway controller here, so each HTTPRoute gets a loopback address of its own (like a Service,
from the same 127.2.x.y allocation) with one HTTP frontend whose servers are the *ready* endpoints of its
backendRefs, weighted so that each backendRef gets weight/sum(weights) of the requests whatever the number
of pods behind it (`proxymodel.server_weights`). That is what the gatewayAPI traffic router's weights do on
a real Gateway, so the router is exercised for real.

The subset honoured (docs/devcluster.md): the route's first rule with backendRefs (matches, filters,
hostnames and parentRefs are not evaluated: every request to the route's address goes to that rule);
backendRefs in the route's own namespace (a cross-namespace ref needs a ReferenceGrant, which the dev cluster
does not have) of kind Service (group "", with a `port`) or InferencePool (group inference.networking.k8s.io,
the Gateway API Inference Extension v1); `weight` defaulting to 1. The frontend listens on the first
backendRef's port (a pool's: its first target port). A backendRef with no ready endpoint (or whose object
does not exist) gets no traffic: its share goes to the others (a real Gateway would answer 500/503 for that
share).

InferencePool backends are a STAND-IN FOR THE ENDPOINT PICKER, not one: no Endpoint Picker runs here, so a
pool's endpoints are simply the Ready pods its `spec.selector.matchLabels` selects in the pool's namespace,
each on every `spec.targetPorts[].number`, balanced by HAProxy's plain (weighted) round robin inside the
backendRef's share: no load-, queue- or KV-cache-aware picking, no model-name routing. Honoured: `selector.
matchLabels`, `targetPorts[].number`, `appProtocol` (only `http`, the default; a `kubernetes.io/h2c` pool is
not proxied). Not read: `endpointPickerRef` (name, port, `failureMode`: the proxy behaves as a Gateway whose
picker failed open would, picking endpoints itself) and `status`. A ref's `port` is ignored for a pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from localattn_dev.proxymodel import (
    EndpointGroup,
    Frontend,
    is_loopback,
    ready_targets,
    server_weights,
    service_key,
)

KEY_PREFIX = "httproute/"  # "httproute/<ns>/<name>": never a Service key ("<ns>/<name>")
DEFAULT_WEIGHT = 1  # Gateway API: a backendRef without `weight` weighs 1
POOL_GROUP = "inference.networking.k8s.io"  # the Inference Extension's v1 group (v1alpha2 was *.x-k8s.io)
POOL_KIND = "InferencePool"
POOL_APP_PROTOCOLS = ("http",)  # HTTP/1.1, upstream's default; h2c would need HTTP/2 to the servers

BackendKind = Literal["Service", "InferencePool"]


def route_key(route: Mapping[str, Any]) -> str:
    return KEY_PREFIX + service_key(route)


@dataclass(frozen=True)
class RouteBackend:
    """One honoured backendRef: a Service or an InferencePool ("<ns>/<name>"), the Service port (None for a
    pool, whose target ports say where its pods listen), its weight."""

    kind: BackendKind
    name: str
    port: int | None
    weight: int


def route_backends(route: Mapping[str, Any]) -> tuple[list[RouteBackend], list[str]]:
    """The backendRefs the proxy serves (of the first rule that has any) and why the others are not."""
    namespace = (route.get("metadata") or {}).get("namespace", "default")
    rules = [r for r in (route.get("spec") or {}).get("rules") or [] if r.get("backendRefs")]
    if not rules:
        return [], ["no rule with backendRefs"]
    backends: list[RouteBackend] = []
    skipped: list[str] = []
    for ref in rules[0]["backendRefs"]:
        name = str(ref.get("name") or "")
        kind, group = ref.get("kind") or "Service", ref.get("group") or ""
        weight = int(ref.get("weight", DEFAULT_WEIGHT))
        if ref.get("namespace") not in (None, namespace):
            skipped.append(f"{name}: namespace {ref['namespace']} (a cross-namespace ref needs a ReferenceGrant)")
        elif (kind, group) == (POOL_KIND, POOL_GROUP):
            backends.append(RouteBackend("InferencePool", f"{namespace}/{name}", None, weight))
        elif (kind, group) != ("Service", ""):
            skipped.append(f"{name}: kind {kind} of group {group!r} is not proxied")
        elif not ref.get("port"):
            skipped.append(f"{name}: no port (required for a Service)")
        else:
            backends.append(RouteBackend("Service", f"{namespace}/{name}", int(ref["port"]), weight))
    return backends, skipped


def pool_problem(pool: Mapping[str, Any] | None) -> str | None:
    """Why the proxy cannot serve this InferencePool (None: it can)."""
    if pool is None:
        return "no such InferencePool"
    spec = pool.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        return "no spec.selector.matchLabels (upstream requires them; an empty selector selects nothing here)"
    if not pool_ports(pool):
        return "no spec.targetPorts"
    if (protocol := spec.get("appProtocol") or "http") not in POOL_APP_PROTOCOLS:
        return f"appProtocol {protocol} is not proxied (HTTP/1.1 only)"
    return None


def pool_ports(pool: Mapping[str, Any]) -> list[int]:
    """The pool's target port numbers, in order (each one an endpoint per pod, as upstream's EPP counts them)."""
    numbers = [int(p["number"]) for p in (pool.get("spec") or {}).get("targetPorts") or [] if p.get("number")]
    return list(dict.fromkeys(numbers))


def endpoint_ready(pod: Mapping[str, Any]) -> bool:
    """A pod that may be sent traffic, as the EndpointSlice controller decides `ready`: condition Ready True,
    an IP, not terminating, not finished."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    return bool(status.get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def pool_targets(pool: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(ip, port) of the pool's endpoints: every target port of every ready pod its selector matches in its
    namespace. Only loopback addresses, as for Services: the dev cluster never sends traffic anywhere else."""
    if pool_problem(pool) is not None:
        return []
    namespace = (pool.get("metadata") or {}).get("namespace", "default")
    selector = dict(pool["spec"]["selector"]["matchLabels"])
    ports = pool_ports(pool)
    targets: list[tuple[str, int]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace", "default") != namespace or any(labels.get(k) != v for k, v in selector.items()):
            continue
        ip = str((pod.get("status") or {}).get("podIP") or "")
        if endpoint_ready(pod) and is_loopback(ip):
            targets.extend((ip, port) for port in ports)
    return sorted(set(targets))


def route_ports(route: Mapping[str, Any], pools: Mapping[str, Mapping[str, Any]] | None = None) -> list[int]:
    """The port the route's frontend listens on, for the address allocation: the first backendRef's (a
    Service ref's `port`; a pool ref's pool's first target port, unknown while that pool is missing)."""
    backends, _ = route_backends(route)
    if not backends:
        return []
    first = backends[0]
    if first.port is not None:
        return [first.port]
    pool = (pools or {}).get(first.name)
    return pool_ports(pool)[:1] if pool is not None and pool_problem(pool) is None else []


def _port_name(service: Mapping[str, Any] | None, number: int) -> str | None:
    for port in ((service or {}).get("spec") or {}).get("ports") or []:
        if int(port.get("port", 0)) == number and port.get("protocol", "TCP") == "TCP":
            return str(port.get("name") or "")
    return None


def backend_targets(
    backend: RouteBackend,
    services: Mapping[str, Mapping[str, Any]],
    slices: Mapping[str, Sequence[Mapping[str, Any]]],
    pools: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[tuple[str, int]]:
    """The (ip, port) servers behind one backendRef: a Service's ready EndpointSlice endpoints on the port the
    ref names (its port number selects the Service port, whose *name* selects the slices' port, as kube-proxy
    does), or an InferencePool's ready selected pods on its target ports."""
    if backend.kind == "InferencePool":
        pool = pools.get(backend.name)
        return pool_targets(pool, pods) if pool is not None else []
    port_name = _port_name(services.get(backend.name), backend.port) if backend.port is not None else None
    return ready_targets(slices.get(backend.name) or (), port_name) if port_name is not None else []


def route_frontends(
    routes: Iterable[Mapping[str, Any]],
    services: Mapping[str, Mapping[str, Any]],
    slices: Mapping[str, Sequence[Mapping[str, Any]]],
    addresses: Mapping[str, str],
    min_port: int = 1,
    pools: Mapping[str, Mapping[str, Any]] | None = None,
    pods: Iterable[Mapping[str, Any]] = (),
) -> list[Frontend]:
    """One HTTP frontend per HTTPRoute with an address, a known port and at least one honoured backendRef.

    `services`, `pools`: "<ns>/<name>" -> the object; `slices`: as `proxymodel.slices_by_service`; `pods`:
    every pod (an InferencePool's endpoints)."""
    pools = pools or {}
    pods = list(pods)
    frontends = []
    for route in sorted(routes, key=route_key):
        key = route_key(route)
        backends, _ = route_backends(route)
        ports = route_ports(route, pools)
        address = addresses.get(key)
        if not backends or not ports or address is None or ports[0] < min_port:
            continue
        groups = []
        for b in backends:
            if targets := backend_targets(b, services, slices, pools, pods):
                groups.append((EndpointGroup(f"{b.kind}/{b.name}", b.weight), targets))
        namespace, name = key.removeprefix(KEY_PREFIX).split("/", 1)
        frontends.append(Frontend(name=f"httproute.{namespace}.{name}.{ports[0]}", service=key, bind_address=address,
                                  port=ports[0], mode="http", servers=tuple(server_weights(groups))))
    return frontends
