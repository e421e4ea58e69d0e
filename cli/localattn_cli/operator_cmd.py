"""`localattn operator run`: the kopf operator."""

from __future__ import annotations

import argparse
import os


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Read by the operator's settings (before its handlers are imported): the given kubeconfig wins over
        # the in-cluster configuration, for our client and for kopf's login alike.
        os.environ["LOCALATTN_KUBECONFIG"] = args.kubeconfig
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.liveness:  # a follower (leader election) answers it itself until kopf serves it
        os.environ["LOCALATTN_LIVENESS_ENDPOINT"] = args.liveness
    import kopf

    import localattn_operator.handlers  # noqa: F401  (registers the handlers)
    from localattn_operator import metrics
    from localattn_operator.handlers import SETTINGS

    port = args.metrics_port if args.metrics_port is not None else SETTINGS.metrics_port
    if port:
        metrics.serve(port, args.metrics_address)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,  # no kopf peering: replicas elect a leader on a Lease instead (leader.py, docs/operator.md)
        clusterwide=not args.namespace,
        namespaces=args.namespace or [],
        liveness_endpoint=args.liveness or None,
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    op = subparsers.add_parser("operator", help="the Kubernetes operator")
    verbs = op.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="reconcile LocalAttnDeployments until interrupted")
    run.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (repeatable)")
    run.add_argument("--kubeconfig", help="kubeconfig file; wins over the in-cluster configuration (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (0 disables)")
    run.add_argument("--metrics-address", default="0.0.0.0")
    run.add_argument("--liveness", default="", help="e.g. http://0.0.0.0:8081/healthz")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=_run)
