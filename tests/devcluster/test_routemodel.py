"""HTTPRoutes as proxy frontends, and backendRef weights -> HAProxy server weights (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localattn_dev import proxyslots
from localattn_dev.proxymodel import (
    MAX_WEIGHT,
    EndpointGroup,
    allocate_addresses,
    integer_weights,
    served_shares,
    server_weights,
    slices_by_service,
)
from localattn_dev.routemodel import route_backends, route_frontends, route_key, route_ports


def test_an_expressible_ratio_is_served_exactly() -> None:
    assert integer_weights([90, 10]) == [252, 28]  # 90:10 exactly, as large as HAProxy allows
    assert served_shares(integer_weights([75, 25])) == [0.75, 0.25]
    assert integer_weights([1, 1, 1]) == [MAX_WEIGHT] * 3  # one group: every server at full weight


def test_weight_zero_is_no_traffic_and_a_small_share_is_never_rounded_away() -> None:
    assert integer_weights([100, 0]) == [MAX_WEIGHT, 0]
    assert integer_weights([0, 0]) == [0, 0]  # nothing routable: HAProxy answers 503
    tiny = integer_weights([999_999, 1])  # upstream's weight range is 0..1000000
    assert tiny[1] == 1 and tiny[0] == MAX_WEIGHT  # the closest HAProxy gets: 1/257, reported, not hidden
    assert served_shares(tiny)[1] == pytest.approx(1 / 257)


@given(st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=1, max_size=6))
def test_integer_weights_stay_in_haproxy_range_and_close_to_the_shares(weights: list[int]) -> None:
    got = integer_weights([float(w) for w in weights])
    assert all(0 <= g <= MAX_WEIGHT for g in got)
    assert all((g == 0) == (w == 0) for g, w in zip(got, weights, strict=True))
    total = sum(weights)
    if total:
        served = served_shares(got)
        # Never worse than the plain "heaviest gets 256" scaling, which is within 1/256 of each share ratio
        # (plus what the floor of 1 adds for shares below 1/256 of the heaviest).
        floor = sum(1 for w in weights if 0 < w < max(weights) / MAX_WEIGHT)
        assert sum(abs(s - w / total) for s, w in zip(served, weights, strict=True)) <= \
            (len(weights) + 2 * floor) / MAX_WEIGHT


def test_each_group_gets_its_share_whatever_its_size() -> None:
    stable = [(f"127.1.0.{i}", 8000) for i in range(2, 5)]  # 3 pods
    canary = [("127.1.1.2", 8000)]  # 1 pod
    servers = server_weights([(EndpointGroup("ns/s", 75), stable), (EndpointGroup("ns/c", 25), canary)])
    shares = dict(zip([(s.address, s.port) for s in servers], served_shares([s.weight for s in servers]), strict=True))
    assert sum(shares[t] for t in stable) == pytest.approx(0.75)
    assert shares[canary[0]] == pytest.approx(0.25)


def svc(name: str, port: int = 8000, port_name: str = "http", ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ClusterIP", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}}


def eps(service: str, ips: list[str], port: int = 8000, ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": f"{service}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def route(refs: list[dict[str, Any]], name: str = "llm", ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}], "backendRefs": refs},
                               {"backendRefs": [{"name": "docs", "port": 80}]}]}}


def frontends_of(r: dict[str, Any], services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> Any:
    addresses = allocate_addresses({}, {route_key(r): route_ports(r)})
    by_key = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s for s in services}
    return route_frontends([r], by_key, slices_by_service(slices), addresses)


def test_a_route_is_one_http_frontend_over_its_first_rule_weighted_by_backendref() -> None:
    r = route([{"name": "llm-stable", "port": 8000, "weight": 90}, {"name": "llm-canary", "port": 8000, "weight": 10}])
    services = [svc("llm-stable"), svc("llm-canary", port_name="serve")]
    slices = [eps("llm-stable", ["127.1.0.2", "127.1.0.3"]), {**eps("llm-canary", ["127.1.1.2"]),
              "ports": [{"name": "serve", "port": 8000, "protocol": "TCP"}]}]
    (f,) = frontends_of(r, services, slices)
    assert (f.name, f.service, f.port, f.mode) == ("httproute.ns.llm.8000", "httproute/ns/llm", 8000, "http")
    assert f.bind_address.startswith("127.2.")
    share = dict(zip([s.address for s in f.servers], served_shares([s.weight for s in f.servers]), strict=True))
    assert share["127.1.0.2"] + share["127.1.0.3"] == pytest.approx(0.9)
    assert share["127.1.1.2"] == pytest.approx(0.1)


def test_unset_weight_is_one_and_unsupported_refs_are_skipped_with_a_reason() -> None:
    r = route([{"name": "a", "port": 8000}, {"name": "b", "port": 8000, "weight": 3},
               {"name": "pool", "group": "inference.networking.x-k8s.io", "kind": "InferencePool"},
               {"name": "far", "namespace": "other", "port": 8000}, {"name": "noport"}])
    backends, skipped = route_backends(r)
    assert [(b.service, b.weight) for b in backends] == [("ns/a", 1), ("ns/b", 3)]
    assert len(skipped) == 3 and any("ReferenceGrant" in s for s in skipped)


def test_a_backend_without_ready_endpoints_gets_no_traffic_and_weight_zero_keeps_its_server_idle() -> None:
    r = route([{"name": "s", "port": 8000, "weight": 50}, {"name": "c", "port": 8000, "weight": 50}])
    (f,) = frontends_of(r, [svc("s"), svc("c")], [eps("s", ["127.1.0.2"])])  # the canary has no ready pod
    assert [(s.address, s.weight) for s in f.servers] == [("127.1.0.2", MAX_WEIGHT)]
    zero = route([{"name": "s", "port": 8000, "weight": 100}, {"name": "c", "port": 8000, "weight": 0}])
    (f,) = frontends_of(zero, [svc("s"), svc("c")], [eps("s", ["127.1.0.2"]), eps("c", ["127.1.1.2"])])
    assert {s.address: s.weight for s in f.servers} == {"127.1.0.2": MAX_WEIGHT, "127.1.1.2": 0}


def test_a_weight_change_is_runtime_set_weight_commands_not_a_reload() -> None:
    services = [svc("s"), svc("c")]
    slices = [eps("s", ["127.1.0.2"]), eps("c", ["127.1.1.2"])]
    before = frontends_of(route([{"name": "s", "port": 8000, "weight": 100},
                                 {"name": "c", "port": 8000, "weight": 0}]), services, slices)
    after = frontends_of(route([{"name": "s", "port": 8000, "weight": 75},
                                {"name": "c", "port": 8000, "weight": 25}]), services, slices)
    first = proxyslots.plan(None, {}, before)
    second = proxyslots.plan(before, first.slots, after)
    assert not second.reload
    assert second.commands and all(c.startswith("set weight httproute.ns.llm.8000/") for c in second.commands)


def test_a_route_without_backends_has_no_frontend() -> None:
    assert frontends_of({"metadata": {"name": "x", "namespace": "ns"}, "spec": {"rules": [{}]}}, [], []) == []


def test_the_dev_schema_is_the_api_the_router_and_the_proxy_use() -> None:
    from localattn_dev.dataplane import HTTPROUTES
    from localattn_dev.gatewayschema import httproute_crd
    from localattn_operator.routers.gatewayapi import HTTPROUTE_GROUP, HTTPROUTE_PLURAL, HTTPROUTE_VERSION

    crd = httproute_crd()
    (version,) = crd["spec"]["versions"]
    assert (crd["spec"]["group"], version["name"], crd["spec"]["names"]["plural"], crd["spec"]["names"]["kind"]) == \
        (HTTPROUTE_GROUP, HTTPROUTE_VERSION, HTTPROUTE_PLURAL, "HTTPRoute")
    assert f"/apis/{HTTPROUTE_GROUP}/{HTTPROUTE_VERSION}/{HTTPROUTE_PLURAL}" == HTTPROUTES
    ref = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["items"]["properties"][
        "backendRefs"]["items"]
    assert ref["properties"]["weight"] == {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 1}
    assert crd["metadata"]["annotations"]["localattn.dev/schema"] == "dev-subset"
