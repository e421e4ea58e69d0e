"""Pure description of the control-plane processes: which ports, which files, which command lines.

No I/O here, so the exact flags (the part that took measuring to get right) are visible in one place and
testable without starting anything.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from localattn_dev.assets import Assets

# Start order; `down` stops in reverse.
COMPONENTS = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent",
    # The data plane: the service proxy, Prometheus, and the controller that feeds both from the cluster.
    "haproxy", "prometheus", "dataplane",
)  # fmt: skip
# What must restart when a component's endpoint moves.
DEPENDENTS = {
    "etcd": ("kube-apiserver",),
    "kube-apiserver": ("kube-controller-manager", "kube-scheduler", "node-agent", "dataplane"),
}
SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    prometheus: int = 0  # a default: state files written before the data plane existed still load

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """Files of one cluster under its state dir."""

    state_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def component_kubeconfig(self, identity: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{identity}.kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "cluster.json"


@dataclass(frozen=True)
class NodeSpec:
    """What the node agent registers."""

    nodes: int = 2
    gpus_per_node: int = 4
    cpu: str = "32"
    memory: str = "256Gi"
    mode: str = "simulate"
    name_prefix: str = "localattn-gpu-"

    def names(self) -> list[str]:
        return [f"{self.name_prefix}{i}" for i in range(self.nodes)]


def server_url(ports: Ports) -> str:
    return f"https://127.0.0.1:{ports.apiserver}"


def etcd_argv(assets: Assets, layout: Layout, ports: Ports) -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(assets.etcd),
        "--name", "localattn-dev",
        "--data-dir", str(layout.etcd_data),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"localattn-dev={peer}",
        "--logger", "zap",
    ]  # fmt: skip


def apiserver_argv(assets: Assets, layout: Layout, ports: Ports) -> list[str]:
    pki = layout.pki
    return [
        str(assets.kube_apiserver),
        "--etcd-servers", f"http://127.0.0.1:{ports.etcd_client}",
        "--bind-address", "127.0.0.1",
        "--advertise-address", "127.0.0.1",
        "--secure-port", str(ports.apiserver),
        "--insecure-port", "0",  # 1.20 still serves plain HTTP on :8080 unless told not to
        "--cert-dir", str(pki),
        "--tls-cert-file", str(pki / "apiserver.crt"),
        "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"),
        "--token-auth-file", str(pki / "tokens.csv"),
        "--authorization-mode", "RBAC",
        "--service-account-issuer", SA_ISSUER,
        "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", SERVICE_CIDR,
        # Without it pods need a token Secret that only the (disabled) token controller would create.
        "--disable-admission-plugins", "ServiceAccount",
        "--allow-privileged",
    ]  # fmt: skip


def controller_manager_argv(assets: Assets, layout: Layout, ports: Ports) -> list[str]:
    kubeconfig = str(layout.component_kubeconfig("controller-manager"))
    return [
        str(assets.kube_controller_manager),
        "--kubeconfig", kubeconfig,
        "--authentication-kubeconfig", kubeconfig,
        "--authorization-kubeconfig", kubeconfig,
        "--controllers", "*,-serviceaccount-token",
        "--leader-elect=false",
        "--bind-address", "127.0.0.1",
        "--secure-port", str(ports.controller_manager),
        "--port", "0",  # no insecure endpoint on the well-known :10252
        "--service-cluster-ip-range", SERVICE_CIDR,
        "--root-ca-file", str(layout.pki / "ca.crt"),
        "--cluster-signing-cert-file", str(layout.pki / "ca.crt"),
        "--cluster-signing-key-file", str(layout.pki / "ca.key"),
        "--use-service-account-credentials=false",
    ]  # fmt: skip


def scheduler_argv(assets: Assets, layout: Layout, ports: Ports) -> list[str]:
    kubeconfig = str(layout.component_kubeconfig("scheduler"))
    return [
        str(assets.kube_scheduler),
        "--kubeconfig", kubeconfig,
        "--authentication-kubeconfig", kubeconfig,
        "--authorization-kubeconfig", kubeconfig,
        "--leader-elect=false",
        "--bind-address", "127.0.0.1",
        "--secure-port", str(ports.scheduler),
        "--port", "0",  # no insecure endpoint on the well-known :10251
    ]  # fmt: skip


def dataplane_argv(layout: Layout) -> list[str]:
    """Services/EndpointSlices -> HAProxy and Pods -> Prometheus targets (`localattn_dev.dataplane`)."""
    return [
        sys.executable, "-m", "localattn_dev.dataplane",
        "--kubeconfig", str(layout.kubeconfig),
        "--state-dir", str(layout.state_dir),
    ]  # fmt: skip


def node_agent_argv(kubeconfig: Path, spec: NodeSpec, state_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "localattn_dev.nodeagent",
        "--kubeconfig", str(kubeconfig),
        "--state-dir", str(state_dir),
        "--nodes", str(spec.nodes),
        "--gpus-per-node", str(spec.gpus_per_node),
        "--cpu", spec.cpu,
        "--memory", spec.memory,
        "--mode", spec.mode,
        "--name-prefix", spec.name_prefix,
    ]  # fmt: skip
