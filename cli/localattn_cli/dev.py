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
        "--pods",
        "--node-mode",
        dest="node_mode",
        choices=["simulate", "process"],
        default="simulate",
        help="process: pods bound to the fake nodes run as local processes (probes, restarts, logs; the "
        "model store is filled first); simulate: they are reported Running and Ready, nothing runs",
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

    p = sub.add_parser("logs", help="a process-mode pod's container output (its current or previous run)")
    p.add_argument("pod", metavar="POD")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-c", "--container", default=None, help="needed when the pod has several containers")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing (and follow restarts)")
    p.add_argument("-p", "--previous", action="store_true", help="the run before the current one")
    p.set_defaults(func=_logs)

    p = sub.add_parser("demo", help="what `make demo` runs: a local-attention revision rolled out on real vLLM pods")
    p.add_argument("--model", default="tiny-llama", choices=["tiny-llama", "tiny-random"],
                   help="tiny-random: seconds to build, meaningless quality (for trying the demo out)")
    p.add_argument("--no-bad", action="store_true", help="skip the bad revision")
    p.add_argument("--demo-dir", type=Path, default=None, help="operator log, load results, report (default .localattn/)")
    p.add_argument("--down", action="store_true", help="stop what the demo started (`make demo-down`)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("url", help="print the proxy URL of a Service or HTTPRoute (http://127.2.x.y:PORT), or Prometheus'")
    p.add_argument("service", metavar="SERVICE", help="a Service name, `httproute/NAME`, or `prometheus`")
    p.add_argument("-n", "--namespace", default="default")
    p.set_defaults(func=_url)


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
    if args.node_mode == "process" and info.nodes:
        print("pods run as local processes (`localattn dev logs POD` shows their output)")
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


def _demo(args: argparse.Namespace) -> int:
    from localattn_dev.demo import main

    argv = ["--model", args.model]
    argv += ["--state-dir", str(args.state_dir)] if args.state_dir else []
    argv += ["--demo-dir", str(args.demo_dir)] if args.demo_dir else []
    argv += ["--no-bad"] if args.no_bad else []
    argv += ["--down"] if args.down else []
    return main(argv)


def _url(args: argparse.Namespace) -> int:
    from localattn_dev.devurls import url_of

    url = url_of(args.service, args.namespace, args.state_dir)
    if url is None:
        what = "Prometheus" if args.service == "prometheus" else f"{args.namespace}/{args.service}"
        print(f"{what}: not known to the dev cluster's proxy (is `dev up` running?)", file=sys.stderr)
        return 1
    print(url)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from localattn_dev.paths import resolve_state_dir
    from localattn_dev.podlayout import container_logs, find_pod_roots

    roots = find_pod_roots(resolve_state_dir(args.state_dir), args.namespace, args.pod)
    if not roots:
        print(f"no process-mode pod {args.namespace}/{args.pod} ran in this dev cluster", file=sys.stderr)
        return 1
    try:
        container, runs = container_logs(roots[0], args.container)
    except LookupError as e:
        print(str(e), file=sys.stderr)
        return 1
    wanted = runs[-2:-1] if args.previous else runs[-1:]
    if not wanted:
        print(f"container {container!r}: no {'previous ' if args.previous else ''}run", file=sys.stderr)
        return 1
    if args.follow and not args.previous:
        return _follow(wanted[0], roots[0], container)
    sys.stdout.buffer.write(wanted[0].read_bytes())
    return 0


def _follow(path: Path, root: Path, container: str) -> int:
    """Print the run's log as it grows; when the container restarts, go on with the new run (Ctrl-C ends)."""
    import time

    from localattn_dev.podlayout import container_logs

    try:
        while True:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read()
                    if chunk:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                        continue
                    _, runs = container_logs(root, container)
                    if runs and runs[-1] != path:
                        path = runs[-1]
                        break
                    time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
