"""The dev cluster's haproxy.cfg text and the command line it runs under (pure).

HAProxy runs in master-worker mode (`-W`) with a master CLI socket (`-S`): a `reload` there starts a new
worker with the new config, which takes the listening sockets over from the old one (`expose-fd listeners`
on the admin socket), while the old worker finishes the requests in flight and exits (bounded by
`hard-stop-after`). So adding a Service drops nothing. Everything else goes through the admin socket.

Each Service port is a `listen` section (frontend and backend in one, one name for both) with fixed
server slots; the config always carries the slots' current contents, so a reload or a restart of HAProxy
starts from the state the runtime API had put it in (empty slots are `disabled`, i.e. in maintenance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localattn_dev.proxymodel import Frontend
from localattn_dev.proxyslots import Slots, fresh_slots, slot_name

HAPROXY = "/usr/sbin/haproxy"
PLACEHOLDER = "127.0.0.1:9"  # address of an empty slot: never used, the slot is in maintenance
# Long generations stream for minutes; a request in flight must outlive the proxy's idle timeouts.
REQUEST_TIMEOUT = "10m"


@dataclass(frozen=True)
class ProxyFiles:
    """HAProxy's files under the cluster's state dir."""

    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "proxy"

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.root / "master.sock"

    @property
    def health_socket(self) -> Path:
        return self.root / "health.sock"

    @property
    def addresses(self) -> Path:
        return self.root / "addresses.json"

    @property
    def urls(self) -> Path:
        return self.root / "services.json"


def haproxy_argv(files: ProxyFiles, binary: str = HAPROXY) -> list[str]:
    """Foreground master-worker (the process we record stays the master), master CLI on a UNIX socket."""
    return [binary, "-W", "-S", f"{files.master_socket},mode,600", "-f", str(files.config)]


def render(files: ProxyFiles, frontends: Sequence[Frontend], slots: Mapping[str, Slots]) -> str:
    """The whole config: global and defaults, then one `listen` per frontend with its slots."""
    lines = [
        "# Written by localattn_dev.serviceproxy; the runtime API changes servers in place.",
        "global",
        f"    stats socket {files.admin_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 10s",
        "    hard-stop-after 10m",  # an old worker after a reload waits at most this long for its requests
        "    nbthread 2",
        "",
        "defaults",
        "    timeout connect 2s",
        f"    timeout client {REQUEST_TIMEOUT}",
        f"    timeout server {REQUEST_TIMEOUT}",
        "    timeout http-keep-alive 30s",
        "    timeout http-request 30s",
        "    retries 2",
        "    option redispatch",  # a connection refused by a pod going away is retried on another one
        "    balance roundrobin",
        "",
        # HAProxy refuses to start without a listener; this one exists with no Service at all and answers
        # `GET /healthz` on a UNIX socket (no port to allocate).
        "frontend localattn-health",
        f"    bind unix@{files.health_socket} mode 600",
        "    mode http",
        "    monitor-uri /healthz",
        "",
    ]
    for f in sorted(frontends, key=lambda f: f.name):
        lines += _listen(f, slots.get(f.name) or fresh_slots(f.servers))
    return "\n".join(lines) + "\n"


def _listen(frontend: Frontend, slots: Slots) -> list[str]:
    route = frontend.service.startswith("httproute/")
    lines = [
        f"listen {frontend.name}",
        f"    # {'HTTPRoute ' + frontend.service.split('/', 1)[1] if route else 'Service ' + frontend.service}",
        f"    bind {frontend.bind_address}:{frontend.port}",
        f"    mode {frontend.mode}",
    ]
    if frontend.mode == "http":
        lines.append("    option http-keep-alive")
    for i, server in enumerate(slots):
        if server is None:
            lines.append(f"    server {slot_name(i)} {PLACEHOLDER} weight 1 disabled")
        else:
            lines.append(f"    server {slot_name(i)} {server.address}:{server.port} weight {server.weight}")
    lines.append("")
    return lines
