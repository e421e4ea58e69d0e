"""Observe -> decide -> execute for one LocalAttnDeployment.

Every trigger (the LAD changed, a child changed or vanished, a periodic resync) converges through the same
`reconcile`, serialised per object; bursts of child events are coalesced. All state it needs is read from
the cluster on each pass, so a restarted operator continues exactly where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from localattn_operator import metrics
from localattn_operator.k8s import Cluster
from localattn_operator.models import LocalAttnDeploymentStatus
from localattn_operator.render import Owner, render_children, selector_string
from localattn_operator.revision import revision_of
from localattn_operator.status import Observation, compute, status_patch
from localattn_operator.validation import SpecError, validate_spec

log = logging.getLogger(__name__)
Key = tuple[str, str]


def _previous_status(obj: dict[str, Any]) -> LocalAttnDeploymentStatus:
    try:
        return LocalAttnDeploymentStatus.model_validate(obj.get("status") or {})
    except ValidationError:  # hand-edited or from an older version: start over rather than crash
        return LocalAttnDeploymentStatus()


class Reconciler:
    def __init__(self, cluster: Cluster, coalesce_seconds: float = 0.3):
        self._cluster = cluster
        self._coalesce = coalesce_seconds
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._scheduled: dict[Key, asyncio.Task[None]] = {}

    async def reconcile(self, namespace: str, name: str) -> None:
        async with self._locks[(namespace, name)]:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.reconcile_now, namespace, name)
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            metrics.RECONCILES.labels(result="ok").inc()

    def schedule(self, namespace: str, name: str) -> None:
        """Reconcile soon; many triggers within the coalescing delay make one pass."""
        key = (namespace, name)
        if key in self._scheduled:
            return
        self._scheduled[key] = asyncio.get_running_loop().create_task(self._delayed(key))

    async def _delayed(self, key: Key) -> None:
        try:
            await asyncio.sleep(self._coalesce)
        finally:
            # Forget this task before reconciling, so that triggers arriving during the pass schedule the
            # next one; popping afterwards would drop that newer entry and let duplicates pile up.
            self._scheduled.pop(key, None)
        try:
            await self.reconcile(*key)
        except Exception:
            log.exception("reconcile of %s/%s failed; the periodic resync will retry", *key)

    def reconcile_now(self, namespace: str, name: str) -> None:
        cluster = self._cluster
        obj = cluster.get_lad(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return  # gone: owner references let the garbage collector remove the children
        meta = obj["metadata"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        previous = _previous_status(obj)
        selector = selector_string(name)
        obs = Observation(generation=int(meta.get("generation", 1)), previous=previous, now=datetime.now(UTC),
                          selector=selector)
        try:
            spec = validate_spec(obj.get("spec") or {})
        except SpecError as exc:
            obs.problems = exc.problems  # leave every child exactly as it is: the old version keeps serving
        else:
            obs.revision = revision_of(spec)
            obs.desired_replicas = spec.replicas
            for child in render_children(owner, spec):
                obs.applied[f"{child['kind']}/{child['metadata']['name']}"] = cluster.apply(child)
        obs.deployment = cluster.deployment_state(namespace, name)
        if obs.deployment is not None:
            obs.pending = cluster.pending_pods(namespace, selector)
        status, events = compute(obs)
        patch = status_patch(status)
        if patch != status_patch(previous):
            cluster.patch_status(namespace, name, patch)
        for event in events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
            cluster.emit_event(obj, event)
