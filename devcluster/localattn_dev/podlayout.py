"""Where process mode keeps a pod's files under the cluster state dir (shared by the agent and `dev logs`).

<state>/pods/run/<uid>_<container>.json      PID + start ticks of each container process (procs.py)
<state>/pods/<namespace>_<name>_<uid8>/      the pod's root: volumes/, fs/, home/, tmp/, logs/
<state>/pods/<...>/logs/<container>/<n>.log  output of the container's n-th run (n = restartCount)
<state>/hostpath/<path>                      hostPath volumes and hostPath PersistentVolumes
/tmp/localattn-pods/<uid12>                  a short alias of the pod's root (what its paths use)
"""

from __future__ import annotations

import os
from pathlib import Path


def pods_dir(state_dir: Path) -> Path:
    return state_dir / "pods"


def hostpath_root(state_dir: Path) -> Path:
    return state_dir / "hostpath"


def pod_root(state_dir: Path, namespace: str, name: str, uid: str) -> Path:
    return pods_dir(state_dir) / f"{namespace}_{name}_{uid[:8]}"


# Unix socket paths are limited to 107 bytes, and vLLM puts its ZMQ sockets in $TMPDIR: a pod sees its root
# through a short alias (`/tmp/localattn-pods/<uid12>` -> the real root), whatever the state dir's length.
SHORT_ROOTS = Path("/tmp/localattn-pods")


def short_root(uid: str) -> Path:
    return SHORT_ROOTS / uid.replace("-", "")[:12]


# Every dev cluster hands out 127.1.i.x: several process-mode clusters on one machine (a demo and a test
# session) would give two pods the same address, and one's probes would reach the other's server. A pod IP is
# claimed machine-wide first: `<SHORT_ROOTS>/ips/<ip>` is a symlink to the claiming cluster's state dir.
IP_CLAIMS = SHORT_ROOTS / "ips"


def listening_ips() -> set[str]:
    """IPv4 addresses something listens on (TCP), from /proc/net/tcp (little-endian hex addresses)."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # LISTEN
            raw = bytes.fromhex(fields[1].split(":")[0])
            found.add(".".join(str(b) for b in reversed(raw)))
    return found


def claim_ip(state_dir: Path, ip: str) -> bool:
    """Claim `ip` for this cluster (True: ours now or already); a claim whose cluster's state dir is gone
    is stale and taken over. An unclaimed address something already listens on (a cluster whose agent
    predates claims, any other server) is refused."""
    IP_CLAIMS.mkdir(parents=True, exist_ok=True)
    link, ours = IP_CLAIMS / ip, str(state_dir.absolute())
    for _ in range(3):
        try:
            if not link.is_symlink() and ip in listening_ips():
                return False
            os.symlink(ours, link)
            return True
        except FileExistsError:
            try:
                holder = os.readlink(link)
            except OSError:
                continue
            if holder == ours:
                return True
            if Path(holder).exists():
                return False
            link.unlink(missing_ok=True)
    return False


def release_ip(state_dir: Path, ip: str) -> None:
    link = IP_CLAIMS / ip
    try:
        if os.readlink(link) == str(state_dir.absolute()):
            link.unlink(missing_ok=True)
    except OSError:
        pass


def release_all_ips(state_dir: Path) -> None:
    if IP_CLAIMS.is_dir():
        for link in IP_CLAIMS.iterdir():
            release_ip(state_dir, link.name)


def prune_aliases(state_dir: Path) -> None:
    """Remove the short aliases of this cluster's pods, and any alias whose pod root is gone."""
    if not SHORT_ROOTS.is_dir():
        return
    ours = str(pods_dir(state_dir).absolute()) + "/"
    for alias in SHORT_ROOTS.iterdir():
        if alias == IP_CLAIMS:
            continue
        try:
            target = str(alias.readlink()) if alias.is_symlink() else ""
        except OSError:
            continue
        if target and (target.startswith(ours) or not alias.exists()):
            alias.unlink(missing_ok=True)


def record_name(uid: str, container: str) -> str:
    return f"{uid}_{container}"


def log_file(root: Path, container: str, run: int) -> Path:
    return root / "logs" / container / f"{run}.log"


def find_pod_roots(state_dir: Path, namespace: str, name: str) -> list[Path]:
    """Roots of pods with that name, newest first (a Deployment's pods have unique names; a StatefulSet's
    recreated pod reuses its name with a new uid)."""
    roots = [p for p in pods_dir(state_dir).glob(f"{namespace}_{name}_*") if p.is_dir()]
    return sorted(roots, key=lambda p: p.stat().st_mtime, reverse=True)


def container_logs(root: Path, container: str | None) -> tuple[str, list[Path]]:
    """(container, its run logs oldest first); the only container when `container` is None."""
    logs = root / "logs"
    names = sorted(p.name for p in logs.iterdir() if p.is_dir()) if logs.is_dir() else []
    if container is None:
        if len(names) != 1:
            raise LookupError(f"choose a container with -c: {', '.join(names) or 'none ran yet'}")
        container = names[0]
    elif container not in names:
        raise LookupError(f"container {container!r} has no logs (containers: {', '.join(names) or 'none'})")
    runs = sorted((logs / container).glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    return container, runs
