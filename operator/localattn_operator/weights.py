"""Weight -> replicas, and the safe path from one replica split to the next (pure).

Two routers realise a canary weight differently (OME's "capacity vs traffic"):
- `replicas`: one Service selects both arms, so the traffic share *is* the share of ready pods. The split is
  chosen so that ready canary / ready total is as close to the weight as the pod counts allow, at least one
  canary pod while the weight is > 0. With surge the stable arm keeps all its pods while the surge budget
  allows; with `maxSurge: 0` canary pods are taken from stable and the pod (GPU) count never rises.
- `gatewayAPI`: the HTTPRoute splits traffic by weight, so each arm only needs the capacity for its share.

Moving between splits never drops ready pods below what the budget allows (`transfer`): the shrinking arm only
gives up pods the growing arm has already replaced with *ready* ones (with `maxSurge: 0` one pod at a time
must go first, since its GPU is needed). Argo's rule: no traffic weight to an arm with no available pod.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RouterKind = Literal["replicas", "gatewayAPI"]


@dataclass(frozen=True)
class Split:
    """Replica counts (or ready/available pod counts) of the two arms."""

    stable: int
    canary: int

    @property
    def total(self) -> int:
        return self.stable + self.canary


@dataclass(frozen=True)
class RouteWeights:
    """Percent of requests per arm (sums to 100)."""

    stable: int
    canary: int


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def resolve_surge(max_surge: int | str, replicas: int) -> int:
    """`maxSurge` as a pod count: an int as is, "25%" of `replicas` rounded up (as a Deployment's maxSurge)."""
    if isinstance(max_surge, int):
        if max_surge < 0:
            raise ValueError(f"maxSurge must not be negative, got {max_surge}")
        return max_surge
    text = max_surge.strip()
    if text.endswith("%") and text[:-1].isdigit():
        return math.ceil(replicas * int(text[:-1]) / 100)
    if text.isdigit():
        return int(text)
    raise ValueError(f"maxSurge must be a pod count or a percentage like 25%, got {max_surge!r}")


def step_split(replicas: int, weight: int, surge: int, router: RouterKind = "replicas") -> Split:
    """The replica split that realises `weight` percent for the canary at a rollout step."""
    n = replicas
    if n <= 0:
        return Split(0, 0)
    if weight <= 0:
        return Split(n, 1 if router == "gatewayAPI" else 0)  # gatewayAPI: a dark canary, probed but unrouted
    if router == "gatewayAPI":
        canary = min(n, max(1, math.ceil(n * weight / 100)))
        return Split(min(n, max(0, n + surge - canary)), canary)
    if weight >= 100:
        return Split(0, n)
    if surge == 0:
        canary = min(max(1, _round_half_up(n * weight / 100)), max(1, n - 1))
        return Split(n - canary, canary)
    keep_stable = max(1, _round_half_up(n * weight / (100 - weight)))
    if keep_stable <= surge:
        return Split(n, keep_stable)
    total = n + surge
    canary = min(max(1, _round_half_up(total * weight / 100)), total - 1)
    return Split(min(n, total - canary), canary)


def transfer(replicas: int, surge: int, target: Split, current: Split, ready: Split, held: int = 0) -> Split:
    """The next replica split on the way from `current` (last planned) to `target`.

    The shrinking arm keeps every pod the growing arm has not yet replaced with a ready one (less one when
    `surge` is 0, whose GPU the replacement needs); the growing arm gets what the budget `replicas + surge`
    leaves after the shrinking arm's pods as last planned (those this pass removes still hold their GPUs while
    they terminate) and the `held` ones (deleted earlier, still terminating): so the pods holding GPUs never
    exceed the budget, not even for a moment on a cluster with spare GPUs. Called again on every pass, it
    advances as pods become ready and terminated ones go; it never scales a shrinking arm up.
    """
    unavailable = 0 if surge > 0 else 1
    budget = replicas + surge
    if target.canary >= current.canary and target.stable <= current.stable:
        shrink_t, shrink_c, grow_t, grow_ready = target.stable, current.stable, target.canary, ready.canary
        canary_grows = True
    elif target.stable >= current.stable and target.canary <= current.canary:
        shrink_t, shrink_c, grow_t, grow_ready = target.canary, current.canary, target.stable, ready.stable
        canary_grows = False
    elif target.stable <= current.stable and target.canary <= current.canary:
        return target  # both shrink (the LAD was scaled down): nothing to protect
    else:  # both grow (scaled up): stable first, the canary within what is left of the budget
        stable = min(target.stable, budget)
        return Split(stable, min(target.canary, max(0, budget - stable)))
    shrink = max(shrink_t, min(shrink_c, replicas - unavailable - grow_ready))
    grow = min(grow_t, max(0, budget - shrink_c - held))
    return Split(shrink, grow) if canary_grows else Split(grow, shrink)


def drain(replicas: int, surge: int, current: Split, ready: Split) -> Split:
    """Rollback or cancel: stable back to `replicas`, the removed canary's pods gone as soon as possible.

    Only *ready* canary pods are kept, and only while the stable arm is short of ready pods (less one with
    `maxSurge: 0`, so that the stable arm gets the GPU it needs); where stable kept all its pods (surge, low
    weights) the canary goes at once. Traffic to stable first: the router weights say 100/0 meanwhile.
    """
    unavailable = 0 if surge > 0 else 1
    keep = max(0, min(current.canary, ready.canary, replicas - unavailable - ready.stable))
    return Split(min(replicas, max(0, replicas + surge - keep)), keep)


def settled(planned: Split, ready: Split) -> bool:
    """Every planned pod is ready (a step's analysis window starts only then)."""
    return ready.stable >= planned.stable and ready.canary >= planned.canary


def achieved_weight(ready: Split) -> int:
    """The replicas router's real canary share: ready canary / ready total, in percent."""
    return 0 if ready.total <= 0 else _round_half_up(100 * ready.canary / ready.total)


def capacity_weights(ready: Split) -> RouteWeights:
    """Weights proportional to ready pods (while capacity moves between arms at promotion or rollback)."""
    canary = achieved_weight(ready)
    return RouteWeights(100 - canary, canary)


def route_weights(weight: int, available: Split, needed: Split | None = None) -> RouteWeights:
    """The gatewayAPI weights for a desired canary weight, never sending traffic to an arm with 0 available pods
    while the other has some (Argo's rule). With `needed` (the step's split), the canary's share grows with its
    available pods, so one ready pod of five is not sent the traffic meant for five."""
    weight = min(100, max(0, weight))
    if available.canary <= 0 and available.stable > 0:
        return RouteWeights(100, 0)
    if available.stable <= 0 and available.canary > 0:
        return RouteWeights(0, 100)
    if needed is not None and 0 < available.canary < needed.canary:
        weight = max(1, math.floor(weight * available.canary / needed.canary))
    return RouteWeights(100 - weight, weight)


def deployment_strategy(surge: int) -> dict[str, int]:
    """A Deployment rollingUpdate within the same budget (for the renderer): never above replicas + surge."""
    return {"maxSurge": min(surge, 1), "maxUnavailable": 0} if surge > 0 else {"maxSurge": 0, "maxUnavailable": 1}
