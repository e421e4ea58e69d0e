"""kopf handlers: thin triggers into the one reconcile path (see reconciler.py).

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from localattn_operator import leader, metrics, models
from localattn_operator.k8s import Cluster, load_api_client, load_configuration
from localattn_operator.reconciler import Reconciler
from localattn_operator.render import LABEL_NAME, MANAGED_BY
from localattn_operator.settings import Settings

SETTINGS = Settings.from_env()
log = logging.getLogger(__name__)
_LAD = (models.GROUP, models.VERSION, models.PLURAL)
_CHILDREN = {"app.kubernetes.io/managed-by": MANAGED_BY}
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"), ("", "v1", "configmaps"), ("", "v1", "pods"))
CHILD_SELECTOR = ",".join(f"{k}={v}" for k, v in _CHILDREN.items())


def configure_settings(settings: kopf.OperatorSettings, ours: Settings) -> None:
    """kopf's settings as this operator needs them (a function of ours, so that tests can check them)."""
    # Progress and diff-base live in annotations under our own prefix: status stays ours, and nothing is
    # kept only in memory.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=models.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 40  # kopf's own events only for errors; ours say what was decided
    # No call without a deadline: kopf's short requests, and its watch streams (the server closes them after
    # server_timeout; a stream silent for longer than client_timeout is a dead connection, reopened).
    settings.networking.request_timeout = ours.api_timeout_seconds
    settings.networking.connect_timeout = ours.api_connect_timeout_seconds
    settings.watching.server_timeout = ours.watch_server_timeout_seconds
    settings.watching.client_timeout = ours.watch_client_timeout_seconds
    settings.watching.connect_timeout = ours.api_connect_timeout_seconds
    # Server-side filtering of the child watches: the apiserver sends only the objects we render, not every
    # Pod, ConfigMap, Service and Deployment of the cluster (the handlers' `labels=` alone filter client-side).
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = CHILD_SELECTOR
    settings.batching.worker_limit = 64


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The same credentials as our own client (k8s.load_configuration): an explicit kubeconfig wins over the
    in-cluster service account. kopf's built-in login tries in-cluster first, whatever the command line said."""
    config = load_configuration(SETTINGS.kubeconfig)
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _space, bearer = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or ("Bearer" if bearer else None),
        token=bearer or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings, SETTINGS)
    memo.executor = ThreadPoolExecutor(max_workers=SETTINGS.reconcile_threads, thread_name_prefix="reconcile")
    asyncio.get_running_loop().set_default_executor(memo.executor)
    api = load_api_client(SETTINGS.kubeconfig)
    if SETTINGS.leader_election_namespace:
        memo.elector = await _lead(api)
    cluster = Cluster(api, connect_timeout=SETTINGS.api_connect_timeout_seconds, read_timeout=SETTINGS.api_timeout_seconds)
    memo.reconciler = Reconciler(
        cluster, coalesce_seconds=SETTINGS.coalesce_seconds, pending_grace_seconds=SETTINGS.pending_grace_seconds,
        prometheus_url=SETTINGS.prometheus_url, measure_threads=SETTINGS.measure_threads,
        autoscale_interval=SETTINGS.autoscale_interval_seconds, load_window=SETTINGS.autoscale_window_seconds,
    )


async def _lead(api: Any) -> leader.Elector:
    """Wait, inside kopf's startup, until this replica holds the Lease (leader.py). kopf starts no watcher before
    its startup handlers return, so a follower reads and writes nothing of the LADs; meanwhile it answers the
    liveness endpoint itself. Lease calls get timeouts within the renew deadline (the watchdog bounds the rest)."""
    timing = leader.Timing(SETTINGS.lease_duration_seconds, SETTINGS.renew_deadline_seconds,
                           SETTINGS.retry_period_seconds)
    leases = Cluster(api, connect_timeout=min(SETTINGS.api_connect_timeout_seconds, timing.renew_deadline / 3),
                     read_timeout=min(SETTINGS.api_timeout_seconds, timing.renew_deadline / 2))
    assert SETTINGS.leader_election_namespace
    elector = leader.Elector(leases, namespace=SETTINGS.leader_election_namespace, name=SETTINGS.lease_name,
                             identity=SETTINGS.leader_identity or leader.default_identity(), timing=timing)
    log.info("leader election: %s waits for lease %s/%s", elector.identity, elector.namespace, elector.name)
    elector.start()
    try:
        with leader.follower_health(SETTINGS.liveness_endpoint, elector.alive):
            while not elector.leading.is_set():
                if not elector.alive():
                    raise kopf.PermanentError("leader election stopped before this replica led")
                await asyncio.sleep(0.1)
    except asyncio.CancelledError:  # stopped while following: never acquire on the way out
        elector.release()
        raise
    metrics.LEADER.set(1)
    return elector


@kopf.on.cleanup()
async def release_lease(memo: kopf.Memo, **_: Any) -> None:
    """On a clean shutdown hand the Lease back, but only after the passes in flight finished (a follower must
    not start while one still writes): a follower then leads within its retry period."""
    elector: leader.Elector | None = getattr(memo, "elector", None)
    if elector is None:
        return
    executor: ThreadPoolExecutor | None = getattr(memo, "executor", None)
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)  # bounded: every API call of a pass has a timeout
    elector.release()


@kopf.on.resume(*_LAD)
@kopf.on.create(*_LAD)
@kopf.on.update(*_LAD)
async def lad_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.reconcile(namespace or "default", name)


@kopf.timer(*_LAD, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
async def resync(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.reconcile(namespace or "default", name)


@kopf.on.event("apps", "v1", "deployments", labels=_CHILDREN)
@kopf.on.event("", "v1", "services", labels=_CHILDREN)
@kopf.on.event("", "v1", "configmaps", labels=_CHILDREN)
@kopf.on.event("", "v1", "pods", labels=_CHILDREN)
async def child_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    owner = labels.get(LABEL_NAME)
    if owner and namespace and hasattr(memo, "reconciler"):
        memo.reconciler.schedule(namespace, owner)
