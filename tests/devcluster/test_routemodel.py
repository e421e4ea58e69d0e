"""HTTPRoutes as proxy frontends, and backendRef weights -> HAProxy server weights (pure)."""

from __future__ import annotations

from collections.abc import Sequence
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
    assert [(b.kind, b.name, b.weight) for b in backends] == [("Service", "ns/a", 1), ("Service", "ns/b", 3)]
    assert len(skipped) == 3 and any("ReferenceGrant" in s for s in skipped)
    assert any("inference.networking.x-k8s.io" in s for s in skipped)  # v1alpha2's group: not the v1 API


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


# --- InferencePool backendRefs (the stand-in for the Endpoint Picker) ----------------------------------------

POOL_REF = {"group": "inference.networking.k8s.io", "kind": "InferencePool"}


def pool(name: str, labels: dict[str, str], ports: list[int], ns: str = "ns", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": labels}, "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}, **spec}}


def pod(name: str, ip: str, labels: dict[str, str], ns: str = "ns", ready: bool = True, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels, **meta},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pool_frontends(r: dict[str, Any], pools: Sequence[dict[str, Any]], pods: Sequence[dict[str, Any]],
                   services: Sequence[dict[str, Any]] = (), slices: Sequence[dict[str, Any]] = ()) -> Any:
    by_pool = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pools}
    addresses = allocate_addresses({}, {route_key(r): route_ports(r, by_pool)})
    by_key = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s for s in services}
    return route_frontends([r], by_key, slices_by_service(slices), addresses, pools=by_pool, pods=pods)


def shares_of(f: Any) -> dict[tuple[str, int], float]:
    return dict(zip([(s.address, s.port) for s in f.servers], served_shares([s.weight for s in f.servers]),
                    strict=True))


def test_a_pool_backend_is_its_ready_selected_pods_on_every_target_port_weighted_like_a_service() -> None:
    arm = {"app": "llm", "track": "canary"}
    r = route([{**POOL_REF, "name": "llm-canary", "weight": 25}, {"name": "llm-stable", "port": 8000, "weight": 75}])
    pods = [
        pod("c1", "127.1.0.5", {**arm, "extra": "x"}),  # selected: matchLabels is a subset of its labels
        pod("c2", "127.1.1.5", arm),
        pod("c3", "127.1.1.6", arm, ready=False),  # not Ready
        pod("c4", "127.1.1.7", arm, deletionTimestamp="2026-01-01T00:00:00Z"),  # terminating
        pod("c5", "127.1.1.8", arm, ns="other"),  # another namespace: a pool selects in its own only
        pod("s1", "127.1.0.9", {"app": "llm", "track": "stable"}),  # the other arm's pod
        pod("c6", "10.0.0.7", arm),  # never anything but loopback
        pod("c7", "", arm),  # no IP yet
    ]
    (f,) = pool_frontends(r, [pool("llm-canary", arm, [8000, 8001])], pods, [svc("llm-stable")],
                          [eps("llm-stable", ["127.1.0.2"])])
    assert (f.name, f.port, f.mode) == ("httproute.ns.llm.8000", 8000, "http")  # the pool's first target port
    share = shares_of(f)
    canary = {(ip, port) for ip in ("127.1.0.5", "127.1.1.5") for port in (8000, 8001)}
    assert set(share) == canary | {("127.1.0.2", 8000)}  # two pods x two target ports, plus the Service's one
    assert sum(share[t] for t in canary) == pytest.approx(0.25)
    assert share[("127.1.0.2", 8000)] == pytest.approx(0.75)


def test_a_missing_or_unusable_pool_gets_no_traffic_and_a_route_led_by_one_has_no_port_yet() -> None:
    from localattn_dev.routemodel import pool_problem

    arm = {"app": "llm"}
    pods = [pod("a", "127.1.0.5", arm)]
    r = route([{"name": "s", "port": 8000, "weight": 50}, {**POOL_REF, "name": "p", "weight": 50}])
    (f,) = pool_frontends(r, [], pods, [svc("s")], [eps("s", ["127.1.0.2"])])  # no such pool: its share moves
    assert [(s.address, s.weight) for s in f.servers] == [("127.1.0.2", MAX_WEIGHT)]
    led = route([{**POOL_REF, "name": "p"}, {"name": "s", "port": 8000}])
    assert route_ports(led) == []  # the port is the pool's: unknown until it exists (no frontend meanwhile)
    assert pool_frontends(led, [], pods, [svc("s")], [eps("s", ["127.1.0.2"])]) == []
    assert route_ports(led, {"ns/p": pool("p", arm, [9000, 8000])}) == [9000]
    for broken, why in ((pool("p", {}, [8000]), "matchLabels"), (pool("p", arm, []), "targetPorts"),
                        (pool("p", arm, [8000], appProtocol="kubernetes.io/h2c"), "h2c")):
        problem = pool_problem(broken)
        assert problem is not None and why in problem
        assert pool_frontends(r, [broken], pods, [svc("s")], [eps("s", ["127.1.0.2"])])[0].servers == \
            f.servers  # an empty selector selects nothing (not every pod); h2c is not spoken to the pods
    assert pool_problem(pool("p", arm, [8000], appProtocol="http")) is None


def test_a_pool_weight_change_is_set_weight_and_a_pod_turning_ready_fills_a_slot_without_a_reload() -> None:
    arm = {"app": "llm"}
    p = [pool("p", arm, [8000])]
    services, slices = [svc("s")], [eps("s", ["127.1.0.2"])]

    def at(weights: tuple[int, int], pods: list[dict[str, Any]]) -> Any:
        r = route([{"name": "s", "port": 8000, "weight": weights[0]}, {**POOL_REF, "name": "p", "weight": weights[1]}])
        return pool_frontends(r, p, pods, services, slices)

    one = [pod("a", "127.1.0.5", arm)]
    first = proxyslots.plan(None, {}, at((90, 10), one))
    moved = proxyslots.plan(at((90, 10), one), first.slots, at((50, 50), one))
    assert not moved.reload and moved.commands
    grown = proxyslots.plan(at((50, 50), one), moved.slots, at((50, 50), [*one, pod("b", "127.1.1.5", arm)]))
    assert not grown.reload and any("127.1.1.5" in c for c in grown.commands)


def test_the_operators_arm_pools_select_its_arms_pods_through_the_dev_schemas_fields() -> None:
    """What the operator renders (`arm_inference_pool`, the arms' pod templates) is what the proxy reads, in
    the field names of the dev cluster's CRD (upstream's: selector.matchLabels, targetPorts[].number)."""
    from pathlib import Path

    import yaml

    from localattn_dev.dataplane import INFERENCE_POOLS
    from localattn_dev.testing import example_lad
    from localattn_operator.models import EndpointPickerRef
    from localattn_operator.render import Owner, arm_inference_pool, definition_of, render_arm
    from localattn_operator.routers.gatewayapi import INFERENCE_POOL_GROUP
    from localattn_operator.validation import validate_spec

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "devcluster" / "localattn_dev" / "crds" /
                          "inferencepool.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    assert f"/apis/{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['plural']}" == INFERENCE_POOLS
    assert crd["spec"]["group"] == INFERENCE_POOL_GROUP == POOL_REF["group"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["selector"]["required"] == ["matchLabels"]  # upstream requires them too
    assert set(spec["properties"]["targetPorts"]["items"]["properties"]) == {"number"}
    assert spec["properties"]["appProtocol"]["enum"] == ["http", "kubernetes.io/h2c"]

    owner = Owner(name="llm", namespace="ns", uid="u")
    definition = definition_of(validate_spec(example_lad("llm")["spec"]))
    pools, pods = [], []
    for i, track in enumerate(("stable", "canary")):
        pools.append(arm_inference_pool(owner, definition, track, EndpointPickerRef(name="epp", port=9002)))
        pools[-1]["metadata"]["namespace"] = "ns"
        labels = render_arm(owner, definition, track, 1)["spec"]["template"]["metadata"]["labels"]
        pods.append(pod(f"{track}-0", f"127.1.{i}.5", labels))
    r = route([{**POOL_REF, "name": "llm-stable", "weight": 90}, {**POOL_REF, "name": "llm-canary", "weight": 10}])
    (f,) = pool_frontends(r, pools, pods)
    port = pools[0]["spec"]["targetPorts"][0]["number"]
    assert shares_of(f) == {("127.1.0.5", port): pytest.approx(0.9), ("127.1.1.5", port): pytest.approx(0.1)}
