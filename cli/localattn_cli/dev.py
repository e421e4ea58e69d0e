"""`localattn dev ...`: the local Kubernetes (real control plane on loopback + fake GPU nodes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = subparsers.add_parser("dev", help="local Kubernetes control plane with fake GPU nodes")
    dev.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="cluster files (default: $LOCALATTN_DEV_DIR or ~/.cache/localattn/dev)",
    )
    sub = dev.add_subparsers(dest="dev_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "up", help="build once, then start etcd, apiserver, controllers, scheduler, node agent"
    )
    p.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    p.add_argument("--gpus-per-node", type=int, default=4, help="nvidia.com/gpu per node (default 4)")
    p.add_argument(
        "--node-mode",
        choices=["simulate"],
        default="simulate",
        help="simulate: pods bound to the fake nodes are reported Running and Ready",
    )
    p.add_argument(
        "--ignore-kubeconfig",
        action="store_true",
        help="start our own cluster even when $KUBECONFIG points at a live one",
    )
    p.add_argument(
        "--agent-on-existing",
        action="store_true",
        help="with a live $KUBECONFIG cluster, register the fake GPU nodes there",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="stop everything `dev up` started (and nothing else)")
    p.add_argument("--purge", action="store_true", help="also delete the cluster's data, certs and logs")
    p.set_defaults(func=_down)

    p = sub.add_parser("status", help="what runs, where, and whether it answers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)

    p = sub.add_parser("kubeconfig", help="print the admin kubeconfig path (export KUBECONFIG=$(...))")
    p.set_defaults(func=_kubeconfig)

    p = sub.add_parser("build", help="build (or find cached) control-plane binaries; print their directory")
    p.set_defaults(func=_build)


def _up(args: argparse.Namespace) -> int:
    from localattn_dev.assets import AssetsError
    from localattn_dev.controlplane import ClusterError, up

    try:
        info = up(
            args.state_dir,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            node_mode=args.node_mode,
            use_existing=not args.ignore_kubeconfig,
            agent_on_existing=args.agent_on_existing,
        )
    except (ClusterError, AssetsError) as e:
        print(f"dev up failed: {e}", file=sys.stderr)
        return 1
    verb = "started" if info.started else "already running"
    where = "existing cluster from $KUBECONFIG" if info.external else f"state in {info.state_dir}"
    print(f"{verb}: {info.server} ({where})")
    if info.nodes:
        print(f"nodes: {', '.join(info.nodes)}")
        if not info.started and len(info.nodes) != args.nodes:
            print(f"note: the running cluster has {len(info.nodes)} nodes; `dev down` first to change that")
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from localattn_dev.controlplane import down

    stopped = down(args.state_dir, purge=args.purge)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from localattn_dev.controlplane import status

    st = status(args.state_dir)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st["ready"] else 1
    print(f"state dir:  {st['state_dir']}")
    print(f"server:     {st['server'] or '-'} ({'answers' if st['ready'] else 'not answering'})")
    print(f"kubeconfig: {st['kubeconfig']}")
    for name, c in st["components"].items():
        print(f"  {name:<24} pid {c['pid']:<8} {'running' if c['running'] else 'stopped'}")
    for name, ready in st["nodes"].items():
        print(f"  node {name:<19} {'Ready' if ready else 'NotReady'}")
    return 0 if st["ready"] else 1


def _kubeconfig(args: argparse.Namespace) -> int:
    from localattn_dev.controlplane import kubeconfig_path

    print(kubeconfig_path(args.state_dir))
    return 0


def _build(args: argparse.Namespace) -> int:
    from localattn_dev.assets import AssetsError, build

    try:
        print(build(quiet=False))
    except AssetsError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    return 0
