"""Observe -> decide -> execute for one LocalAttnDeployment.

Every trigger (the LAD changed, a child changed or vanished, a periodic resync, a requested requeue, a finished
measurement) converges through the same `reconcile`, serialised per object; bursts of child events are
coalesced, and of several requests to run again the earliest wins. All state a pass needs is read from the
cluster (status.rollout, the revision records), so a restarted operator continues exactly where the last one
stopped.

A pass: read the LAD and validate it; a revision the cluster has not recorded yet is first dry-run (the
apiserver may refuse it: then nothing of it is written) and then recorded as a ControllerRevision; take the
inventory (records, arms, pods, ConfigMaps, by label); `rollout.step` decides the arms; execute.py applies them
from their records (never from the spec) and prunes; the status and events are computed (status.py) and
posted (events first). Measurements of an analysis window run after the pass, outside the lock and on their
own threads; their verdict feeds the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from localattn_operator import autoscaling, metrics, rollout
from localattn_operator.analysis import AnalysisRequest, Verdict
from localattn_operator.autoscaling_signals import Samples
from localattn_operator.execute import Executor, sync_network_policy
from localattn_operator.k8s import Cluster, Rejected
from localattn_operator.measure import PairedRequest, measure, measure_load
from localattn_operator.metrics_provider import MetricsProvider
from localattn_operator.models import Condition, EndpointPickerRef, LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.observe import (
    Inventory,
    arm_observation,
    arm_pods,
    ready_count,
    scrape_targets,
    serving_problems,
    serving_state,
    take_inventory,
)
from localattn_operator.paired_inputs import paired_request
from localattn_operator.providers.scrape import ScrapeProvider, ScrapeTarget
from localattn_operator.providers.scrape_eval import ScrapeState
from localattn_operator.render import Owner, definition_of, render_arm, render_config_map, selector_string
from localattn_operator.revision import Record, history_limit, next_number, record_name, render_record
from localattn_operator.rollout_types import STEADY, Observation, analysis_due, printer_columns, rollout_spec
from localattn_operator.routers.gatewayapi import GatewayAPIRouter
from localattn_operator.status import DERIVED_FIELDS, Event, compute, parse_previous, status_patch
from localattn_operator.status import Observation as StatusObservation
from localattn_operator.traffic_router import RouterError, TrafficRouter
from localattn_operator.validation import SpecError, validate_spec
from localattn_operator.weights import resolve_surge

log = logging.getLogger(__name__)
Key = tuple[str, str]
SAMPLE_EVERY_SECONDS = 5.0  # the scrape provider's sampling between measurements (bounded history per pod)


@dataclass(frozen=True)
class PassResult:
    requeue_after: float | None = None
    due: AnalysisRequest | None = None  # a window to measure (off the lock) before the next pass
    spec: LocalAttnDeploymentSpec | None = None
    rollout: RolloutStatus | None = None
    # The arms' ready pods by revision, when the spec's analysis scrapes them (spec.analysis.provider.scrape).
    scrape_targets: dict[str, list[ScrapeTarget]] | None = None
    load: LoadRequest | None = None  # spec.autoscaling: measure the load (off the lock) for the next decision
    paired: PairedRequest | None = None  # spec.pairedComparison: the prompts and one pod per arm for `due`


@dataclass(frozen=True)
class LoadRequest:
    """What measuring a LAD's load needs: its spec (providers, targets), the ready pods of each arm by revision,
    and the pods to scrape when the spec's provider scrapes them."""

    spec: LocalAttnDeploymentSpec
    ready_by_revision: dict[str, int]
    scrape_targets: dict[str, list[ScrapeTarget]] | None = None


class Reconciler:
    def __init__(self, cluster: Cluster, coalesce_seconds: float = 0.3, pending_grace_seconds: float = 60.0,
                 prometheus_url: str | None = None, measure_threads: int = 4, autoscale_interval: float = 15.0,
                 load_window: float = 30.0):
        self._cluster = cluster
        self._coalesce = coalesce_seconds
        self._pending_grace = pending_grace_seconds
        self._prometheus_url = prometheus_url
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._scheduled: dict[Key, tuple[float, asyncio.Task[None]]] = {}
        # Verdicts of measured windows, per LAD, until a pass consumes them (memory only: a restarted operator
        # measures the window again; the window itself is in status.rollout).
        self._verdicts: dict[Key, Verdict] = {}
        self._measuring: set[Key] = set()
        # Per LAD, the scrape provider's snapshots (a rate needs one at the window's start) and the last sampling.
        self._scrape_states: dict[Key, ScrapeState] = {}
        self._sampled_at: dict[Key, float] = {}
        self._measure_pool = ThreadPoolExecutor(max_workers=measure_threads, thread_name_prefix="measure")
        # spec.autoscaling: a load measurement per interval, consumed by the one pass that decides on it (memory
        # only: the decision's windows and events are in status.autoscaling; a restart just measures again).
        self._autoscale_interval = autoscale_interval
        self._load_window = load_window
        self._loads: dict[Key, tuple[float, Samples]] = {}
        self._load_started: dict[Key, float] = {}
        self._load_measuring: set[Key] = set()
        self._load_scrape_states: dict[Key, ScrapeState] = {}

    async def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        async with self._locks[key]:
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(self.reconcile_now, namespace, name)
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            metrics.RECONCILES.labels(result="ok").inc()
        if result.due is not None and result.spec is not None and result.rollout is not None:
            self._start_measurement(key, result.due, result.spec, result.rollout, result.scrape_targets,
                                    result.paired)
        elif result.scrape_targets:
            self._start_sampling(key, result.scrape_targets)
        if result.load is not None:
            self._start_load(key, result.load)
            self.schedule(namespace, name, delay=self._autoscale_interval)  # the next decision (earliest wins)
        if result.requeue_after is not None:
            self.schedule(namespace, name, delay=result.requeue_after)

    def _scrape_provider(self, key: Key, targets: dict[str, list[ScrapeTarget]] | None) -> ScrapeProvider | None:
        if targets is None:
            return None
        state = self._scrape_states.setdefault(key, ScrapeState())
        state.forget_except({t.url for arm in targets.values() for t in arm})
        return ScrapeProvider(targets, state)

    def _start_sampling(self, key: Key, targets: dict[str, list[ScrapeTarget]]) -> None:
        """Scrape the arms' pods now and then (a window's start needs a snapshot), off the lock, one job per LAD."""
        loop = asyncio.get_running_loop()
        if key in self._measuring or loop.time() - self._sampled_at.get(key, -1e9) < SAMPLE_EVERY_SECONDS:
            return
        provider = self._scrape_provider(key, targets)
        assert provider is not None
        self._measuring.add(key)
        self._sampled_at[key] = loop.time()
        future = loop.run_in_executor(self._measure_pool, provider.sample)
        future.add_done_callback(lambda _f: self._measuring.discard(key))

    def _start_measurement(self, key: Key, due: AnalysisRequest, spec: LocalAttnDeploymentSpec,
                           status: RolloutStatus, targets: dict[str, list[ScrapeTarget]] | None = None,
                           paired: PairedRequest | None = None) -> None:
        if key in self._measuring or (key in self._verdicts and self._verdicts[key].request == due):
            return
        self._measuring.add(key)
        loop = asyncio.get_running_loop()
        self._sampled_at[key] = loop.time()  # measuring scrapes too: that is the next window's start
        future = loop.run_in_executor(self._measure_pool, _timed_measure, due, spec, status, key[0], key[1],
                                      self._prometheus_url, self._scrape_provider(key, targets), paired)

        def done(f: asyncio.Future[Verdict]) -> None:
            self._measuring.discard(key)
            try:
                self._verdicts[key] = f.result()
            except Exception:
                log.exception("measuring %s/%s failed; measured again on the next pass", *key)
                self.schedule(*key, delay=5.0)
                return
            self.schedule(*key, delay=0.0)

        future.add_done_callback(done)

    def _start_load(self, key: Key, request: LoadRequest) -> None:
        """Measure the LAD's load once per decision interval, off the lock; the result triggers a pass at once."""
        now = time.monotonic()
        if key in self._load_measuring or now - self._load_started.get(key, -1e9) < 0.9 * self._autoscale_interval:
            return
        scrape = None
        if request.scrape_targets is not None:
            state = self._load_scrape_states.setdefault(key, ScrapeState())
            state.forget_except({t.url for arm in request.scrape_targets.values() for t in arm})
            scrape = ScrapeProvider(request.scrape_targets, state)
        self._load_measuring.add(key)
        self._load_started[key] = now
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._measure_pool, measure_load, request.spec, key[0], key[1],
                                      request.ready_by_revision, self._load_window, self._prometheus_url, scrape)

        def done(f: asyncio.Future[Samples]) -> None:
            self._load_measuring.discard(key)
            try:
                self._loads[key] = (time.monotonic(), f.result())
            except Exception:
                log.exception("measuring the load of %s/%s failed; the decision holds", *key)
                return
            self.schedule(*key, delay=0.0)

        future.add_done_callback(done)

    def _fresh_load(self, key: Key) -> Samples | None:
        """The load measured since the last decision (taken: each is decided on once), if recent enough."""
        found = self._loads.pop(key, None)
        if found is None or time.monotonic() - found[0] > 3 * self._autoscale_interval:
            return None
        return found[1]

    def schedule(self, namespace: str, name: str, delay: float | None = None) -> None:
        """Reconcile after `delay` seconds (default: the coalescing delay). Of several requests the earliest wins;
        many triggers within the coalescing delay make one pass."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        at = loop.time() + max(self._coalesce, delay if delay is not None else self._coalesce)
        current = self._scheduled.get(key)
        if current is not None:
            if current[0] <= at:
                return
            current[1].cancel()
        self._scheduled[key] = (at, loop.create_task(self._delayed(key, at)))

    async def _delayed(self, key: Key, at: float) -> None:
        await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
        # Forget this task before reconciling, so that triggers arriving during the pass schedule the next one.
        current = self._scheduled.get(key)
        if current is not None and current[1] is asyncio.current_task():
            self._scheduled.pop(key, None)
        try:
            await self.reconcile(*key)
        except Exception:
            log.exception("reconcile of %s/%s failed; the periodic resync will retry", *key)

    def _forget(self, namespace: str, name: str) -> None:
        """Drop the per-LAD memory of a deleted LAD (its lock stays: a pass may still hold it)."""
        key = (namespace, name)
        self._verdicts.pop(key, None)
        self._scrape_states.pop(key, None)
        self._sampled_at.pop(key, None)
        for memory in (self._loads, self._load_started, self._load_scrape_states):
            memory.pop(key, None)

    def reconcile_now(self, namespace: str, name: str) -> PassResult:
        cluster = self._cluster
        obj = cluster.get_lad(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self._forget(namespace, name)
            return PassResult()  # gone: owner references let the garbage collector remove the children
        meta = obj["metadata"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        now = datetime.now(UTC)
        previous, unreadable = parse_previous(obj.get("status") or {})
        if unreadable:
            log.warning("%s/%s: status fields %s are unreadable; kept as they are", namespace, name, unreadable)
        obs = StatusObservation(generation=int(meta.get("generation", 1)), previous=previous, now=now,
                                selector=selector_string(name), pending_grace_seconds=self._pending_grace,
                                unreadable=unreadable)
        inv = take_inventory(cluster, namespace, name, owner.uid)
        spec: LocalAttnDeploymentSpec | None = None
        try:
            spec = validate_spec(obj.get("spec") or {})
        except SpecError as exc:
            obs.problems = exc.problems
        definition = definition_of(spec) if spec is not None else None
        damaged = inv.records.get(definition.revision) if definition is not None else None
        if damaged is not None and damaged.definition is not None:
            damaged = None
        if spec is not None and definition is not None and (definition.revision not in inv.records or damaged):
            # A new revision: the apiserver must accept what it renders before anything of it is written, so a
            # refused spec never leaves half its children behind (the running version keeps serving). A record
            # of the spec's revision edited by hand (its content no longer hashes to its name) is rebuilt from
            # the spec, keeping its number (a ControllerRevision's data is immutable: deleted, then created).
            try:
                cluster.plan_apply(render_config_map(owner, definition))
                cluster.plan_apply(render_arm(owner, definition, "canary", spec.replicas))
            except Rejected as exc:
                obs.rejected = [f"{exc.child} rejected by the apiserver: {exc.message}"]
            else:
                number = damaged.number if damaged is not None else next_number(inv.records.values())
                if damaged is not None:
                    cluster.delete("apps/v1", "ControllerRevision", namespace, damaged.name)
                cluster.apply(render_record(owner, definition, number))
                inv.records[definition.revision] = Record(record_name(name, definition.revision), definition.revision,
                                                          number, definition)
        valid = spec if not obs.rejected else None
        if previous.rollout is not None:
            before = previous.rollout
        else:  # new, or from before rollouts: its running revision is stable if the cluster has its record
            known = previous.current_revision if previous.current_revision in inv.records else None
            before = rollout.initial_status(known)
        verdict = self._verdicts.get((namespace, name))
        router, router_weight, router_error = _router(cluster, valid, namespace, name)
        observation = Observation(
            spec_revision=definition.revision if valid is not None and definition is not None else None,
            stable=arm_observation(inv, "stable"), canary=arm_observation(inv, "canary"),
            recorded_revisions=frozenset(r for r, rec in inv.records.items() if rec.definition is not None),
            annotations=meta.get("annotations") or {}, verdict=verdict, router_weight=router_weight,
            terminating=inv.terminating,
        )
        # Autoscaling (docs/autoscaling.md) decides the LAD's total; rollout.step splits it between the arms by the
        # weight. The total is written to status.autoscaling, then to spec.replicas (the scale subresource).
        scaling = None
        if valid is not None and valid.autoscaling is not None and not {"autoscaling", "rollout"} & set(unreadable):
            scaling = autoscaling.plan(valid.autoscaling, valid.replicas, previous.autoscaling,
                                       self._fresh_load((namespace, name)), sum(_ready_by_revision(inv).values()),
                                       serving_problems(inv).pending, now)
            valid = valid.model_copy(update={"replicas": scaling.decision.desired})
        hold = "rollout" in unreadable  # never act on rollout state we cannot read
        unusable: list[str] = []  # revisions the plan needs whose records cannot be rendered from
        decision = rollout.step(before, observation, valid if not hold else None, now)
        decision = rollout.hold_for_router(before, decision, router_error)  # the route unreadable: nothing moves
        if not hold:
            surge = resolve_surge(rollout_spec(valid).max_surge, valid.replicas) if valid is not None else 1
            keep = {observation.spec_revision} if observation.spec_revision else set()
            deadline = rollout_spec(valid).progress_deadline_seconds if valid is not None else None
            done = Executor(cluster, owner, inv, before, router, _pool_picker(valid)).run(decision, surge, history_limit(valid), keep,
                                                                     deadline)
            if done.router_error is not None:  # the route refused the weights: the executor changed nothing
                router_error = done.router_error
                decision = rollout.hold_for_router(before, decision, router_error)
            obs.applied = done.applied
            obs.rejected = obs.rejected or done.rejected
            if done.missing_records:
                log.warning("%s/%s: no usable revision record for %s", namespace, name, done.missing_records)
                unusable = sorted(set(done.missing_records))
            if done.changed:
                inv = take_inventory(cluster, namespace, name, owner.uid)
            if valid is not None:  # an invalid spec leaves the policy as it is, like the arms
                obs.rejected = obs.rejected or sync_network_policy(cluster, owner, valid)
        st = decision.status
        steady = st.phase in STEADY and st.canary_revision is None and st.draining_revision is None
        obs.revision = st.stable_revision
        obs.desired_replicas = valid.replicas if valid is not None else (st.stable_replicas or None)
        obs.deployment = serving_state(inv, obs.desired_replicas or 0, st.stable_revision, steady)
        if obs.deployment is not None:
            problems = serving_problems(inv)
            obs.pending, obs.failing = problems.pending, problems.failing
        status, events = compute(obs)
        status.rollout = st
        if scaling is not None:
            status.autoscaling = scaling.status
            events.extend(scaling.events)
        elif valid is None or "rollout" in unreadable:
            status.autoscaling = previous.autoscaling  # not decided this pass: the record stays as it is
        status.canary_weight, status.p95_latency_seconds, status.quality = printer_columns(st)
        status.conditions = _rollout_conditions(status.conditions, previous.conditions, st, now, obs.generation,
                                                router_error)
        earlier = next((c for c in previous.conditions if c.type == "Degraded"), None)
        if router_error and (earlier is None or earlier.reason != "TrafficRouterError" or earlier.message != router_error):
            events.append(Event("Warning", "TrafficRouterError", router_error))
        if unusable:  # an arm the rollout needs has no record to render from (deleted or edited by hand)
            events.append(Event("Warning", "RevisionRecordUnusable",
                                f"no usable revision record for {', '.join(unusable)}: its arm is left as it is; "
                                "restore the ControllerRevision or change the spec to roll out a new revision"))
        # Events before the status that records their transition: a crash in between repeats them on the
        # next pass (under the same name, so the apiserver drops the copy) instead of losing them.
        for event in [*events, *decision.events]:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
            cluster.emit_event(obj, event)
        patch = status_patch(status)
        for field_name in unreadable:
            if field_name not in DERIVED_FIELDS:
                patch.pop(field_name, None)  # never replace rollout state we cannot read with a default
        if patch != status_patch(previous) or unreadable:
            cluster.patch_status(namespace, name, patch)
        if scaling is not None:
            _write_scale(cluster, namespace, name, scaling)
        consumed = verdict is not None and st.last_analysis != before.last_analysis
        metrics.observe_rollout(namespace, name, event_reasons=[e.reason for e in decision.events],
                                achieved_weight=st.achieved_weight,
                                gates=[(g.gate, g.phase) for g in verdict.gates] if consumed and verdict else [],
                                step=st.step_index + 1 if st.canary_revision is not None else 0,
                                paired=[(p.bucket, p.agreement) for p in verdict.window.paired
                                        if p.agreement is not None] if consumed and verdict else [])
        due = analysis_due(st, valid, now) if valid is not None else None
        if verdict is not None and verdict.request != due:
            self._verdicts.pop((namespace, name), None)  # consumed, or no longer asked for
        # Sampled whenever an analysis will be due (a canary, or the post-promotion guard on the new stable): a
        # window's rate needs a snapshot from its start.
        scraping = valid is not None and valid.analysis.provider.scrape is not None \
            and (st.canary_revision is not None or due is not None)
        load = None
        if scaling is not None and valid is not None:
            load = LoadRequest(valid, _ready_by_revision(inv),
                               scrape_targets(inv) if valid.analysis.provider.scrape is not None else None)
        paired = paired_request(cluster, namespace, valid, inv, due) \
            if due is not None and due.kind == "canary" and valid is not None and valid.paired_comparison.enabled \
            else None
        return PassResult(decision.requeue_after, due, valid, st, scrape_targets(inv) if scraping else None, load,
                          paired)


def _ready_by_revision(inv: Inventory) -> dict[str, int]:
    """Ready serving pods of each arm, by revision (the autoscaler's samples come from these)."""
    found: dict[str, int] = {}
    for track in inv.arms:
        revision = inv.arm_revision(track)
        if revision:
            found[revision] = found.get(revision, 0) + ready_count(arm_pods(inv, track, revision))
    return found


def _write_scale(cluster: Cluster, namespace: str, name: str, scaling: autoscaling.AutoscalePlan) -> None:
    """After status.autoscaling records the decision: spec.replicas through the scale subresource, and the
    decision's metrics (a pass without a new measurement counts no decision)."""
    if scaling.replicas is not None:
        cluster.scale_lad(namespace, name, scaling.replicas)
    d = scaling.decision
    if scaling.measured or d.direction != "hold":
        metrics.observe_autoscaling(namespace, name, desired=d.desired, direction=d.direction, signal=d.signal,
                                    headroom=scaling.status.headroom_per_replica, gpu_limited=d.gpu_limited)


def _timed_measure(due: AnalysisRequest, spec: LocalAttnDeploymentSpec, status: RolloutStatus, namespace: str,
                   name: str, prometheus_url: str | None, scrape: MetricsProvider | None,
                   paired: PairedRequest | None = None) -> Verdict:
    started = time.perf_counter()
    try:
        return measure(due, spec, status, namespace, name, prometheus_url, scrape, paired)
    finally:
        metrics.ANALYSIS_SECONDS.observe(time.perf_counter() - started)


def _pool_picker(spec: LocalAttnDeploymentSpec | None) -> EndpointPickerRef | None:
    """The Endpoint Picker of a gatewayAPI router whose backends are InferencePools (None: Services)."""
    chosen = spec.rollout.router.gateway_api if spec is not None and spec.rollout is not None else None
    return chosen.endpoint_picker if chosen is not None and chosen.backend_kind == "InferencePool" else None


def _router(cluster: Cluster, spec: LocalAttnDeploymentSpec | None, namespace: str,
            name: str) -> tuple[TrafficRouter | None, int | None, str | None]:
    """The gatewayAPI router of the spec (None: the replicas router), the weight its route carries, its error."""
    chosen = spec.rollout.router.gateway_api if spec is not None and spec.rollout is not None else None
    if chosen is None:
        return None, None, None
    router = GatewayAPIRouter(chosen.http_route, cluster.get_route, cluster.patch_route, chosen.backend_kind)
    try:
        return router, router.achieved_weight(namespace, name), None
    except RouterError as exc:
        return None, None, str(exc)  # nothing is changed on a route that is missing or unreadable


def _rollout_conditions(conditions: list[Condition], before: list[Condition], st: RolloutStatus, now: datetime,
                        generation: int, router_error: str | None = None) -> list[Condition]:
    """Conditions the rollout state implies, derived every pass (not only on the transition): Degraded while a
    rejected revision is rolled back or aborted, or while the traffic router fails (unless the pods give a more
    urgent reason), QualityDrift."""
    out = [c for c in conditions if c.type != "QualityDrift"]
    degraded = next((c for c in out if c.type == "Degraded"), None)
    earlier = {c.type: c for c in before}
    rejected = st.phase in ("RollingBack", "RolledBack", "Aborted") and st.rejected_revision is not None
    if (rejected or router_error) and (degraded is None or degraded.status != "True"):
        reason = "TrafficRouterError" if router_error else "Aborted" if st.phase == "Aborted" else "RolledBack"
        was = earlier.get("Degraded")
        since = was.last_transition_time if was is not None and was.status == "True" and was.reason == reason else None
        replacement = Condition(type="Degraded", status="True", reason=reason, message=router_error or st.message or None,
                                last_transition_time=since or now.isoformat(), observed_generation=generation)
        out = [replacement if c.type == "Degraded" else c for c in out]
        if degraded is None:
            out.append(replacement)
    if st.quality_drift:
        was = earlier.get("QualityDrift")
        since = was.last_transition_time if was is not None and was.status == "True" else None
        out.append(Condition(type="QualityDrift", status="True", reason="QualityRegressed", message=st.message or None,
                             last_transition_time=since or now.isoformat(), observed_generation=generation))
    return out


__all__ = ["PassResult", "Reconciler"]
