"""Pod spec -> what to execute: the image table, and one `ContainerPlan` (argv, env, cwd, mounts, threads,
memory limit, ports) per container.

Pure: the filesystem lookup of executables (`which`), the referenced objects and the CPU load of the machine
come in as arguments. Errors raise `podenv.ConfigError` (kubelet's CreateContainerConfigError),
`podvolumes.VolumeError` (ContainerCreating) or `ImageError` (ErrImagePull).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localattn_dev.podenv import ConfigError, PodFacts, Refs, container_env, expand
from localattn_dev.podvolumes import MountLink, MountTable, VolumePlan, mount_links, volume_plans
from localattn_operator.quantity import parse_quantity

SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


class ImageError(ConfigError):
    """No local program stands for the image (kubelet: ErrImagePull)."""


@dataclass(frozen=True)
class Image:
    """A local stand-in for a container image: where its commands are found and its default entrypoint."""

    pattern: str  # fnmatch against the image reference
    path: tuple[str, ...]  # "{venv}" is the project venv's bin directory
    entrypoint: tuple[str, ...]
    what: str
    env: tuple[tuple[str, str], ...] = ()  # the image's own ENV (a Dockerfile's); the pod spec's env wins
    # The project's packages the image installs, as source dirs under the checkout the node agent runs from
    # (its PYTHONPATH): the venv is shared between checkouts, so its editable install may name another one.
    sources: tuple[str, ...] = ()


# The CPU runtime image's serving ENV (Dockerfile.runtime-cpu sets the same; tests/images checks they agree).
# One engine process instead of two: with V1 multiprocessing off, vLLM's CPU platform keeps the uniprocess
# executor, so the model worker runs inside the engine core process rather than in a third process that maps
# torch again (measured: 1.53 GiB RSS / 1.3 GiB PSS per pod instead of 2.1 / 1.7, start-up no slower; the
# API server still talks to the engine core over its queue, so serving and /metrics are unchanged).
RUNTIME_CPU_ENV: tuple[tuple[str, str], ...] = (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),)

# What Dockerfile.runtime-cpu COPYs of the project (the plugin, its kernels, the CLI and the runtime contract).
RUNTIME_SOURCES = ("runtime", "kernels", "cli")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout this package (and the node agent) runs from

# The image table of process mode (documented in docs/devcluster.md). The first match wins.
IMAGES: tuple[Image, ...] = (
    Image(
        "localattn/vllm-runtime:*", ("{venv}", *SYSTEM_PATH), ("vllm", "serve"), "vLLM + the localattn plugin",
        RUNTIME_CPU_ENV, RUNTIME_SOURCES,
    ),
    Image("vllm/vllm-openai:*", ("{venv}", *SYSTEM_PATH), ("vllm", "serve"), "stock vLLM (same venv)"),
    Image("python:*", ("{venv}", *SYSTEM_PATH), ("python3",), "the venv's Python"),
    Image("busybox*", SYSTEM_PATH, ("sh",), "the host's /bin tools"),
)


def find_image(reference: str) -> Image | None:
    return next((image for image in IMAGES if fnmatch.fnmatchcase(reference, image.pattern)), None)


@dataclass(frozen=True)
class Threads:
    count: int
    cores: tuple[int, ...]


def cpu_threads(container: Mapping[str, Any], host_cpus: int) -> int:
    """Threads from the CPU request (else limit), rounded up, at least 1, at most the machine's CPUs."""
    resources = container.get("resources") or {}
    cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu")
    wanted = math.ceil(parse_quantity(cpu)) if cpu is not None else 1
    return max(1, min(int(wanted), host_cpus))


def pick_cores(count: int, host_cpus: int, load: Mapping[int, int]) -> tuple[int, ...]:
    """The `count` least loaded cores (ties: lowest id), so pods on a small machine spread over its cores
    instead of all binding the same one (vLLM's "auto" binding reserves the last core and binds the rest)."""
    ranked = sorted(range(host_cpus), key=lambda core: (load.get(core, 0), core))
    return tuple(sorted(ranked[:count]))


def memory_limit(container: Mapping[str, Any]) -> int | None:
    value = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return math.ceil(parse_quantity(value)) if value is not None else None


def gpu_count(pod: Mapping[str, Any], resource: str = "nvidia.com/gpu") -> int:
    """GPUs a pod holds: the sum over its containers (limits; requests must equal them for extended resources)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(resource) or (resources.get("requests") or {}).get(
            resource
        )
        total += int(value or 0)
    return total


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    links: tuple[MountLink, ...]
    threads: Threads
    memory_limit: int | None
    ports: Mapping[str, int]


@dataclass(frozen=True)
class NodeEnv:
    """What the node adds to every container: the venv, shared caches, offline switches."""

    venv_bin: Path
    host_cpus: int
    extra: Mapping[str, str]  # e.g. VLLM_CACHE_ROOT (a compile cache shared by every pod of the machine)
    source_root: Path = SOURCE_ROOT


def base_env(image: Image, node: NodeEnv, pod_root: Path, threads: Threads) -> dict[str, str]:
    path = ":".join(p.replace("{venv}", str(node.venv_bin)) for p in image.path)
    return {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": str(pod_root / "home"),
        "TMPDIR": str(pod_root / "tmp"),
        # No mount namespace: paths in argv and env are rewritten, but paths inside mounted files (the runtime
        # config's goldenSetFile, planFile) are not; a program can look them up under this root.
        "LOCALATTN_DEV_FS_ROOT": str(pod_root / "fs"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads.count),
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in threads.cores),
        **dict(image.env),
        **({"PYTHONPATH": ":".join(str(node.source_root / d) for d in image.sources)} if image.sources else {}),
        **node.extra,
    }


def plan_container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    facts: PodFacts,
    refs: Refs,
    volumes: Mapping[str, VolumePlan],
    node: NodeEnv,
    pod_root: Path,
    core_load: Mapping[int, int],
    which: Callable[[str, Sequence[str]], str | None],
) -> ContainerPlan:
    image = find_image(container.get("image", ""))
    if image is None:
        raise ImageError(
            f'image "{container.get("image", "")}" has no local program in the dev cluster\'s image table '
            "(localattn_dev/podplan.py IMAGES)"
        )
    links = mount_links(container, volumes, pod_root)
    table = MountTable(links)
    threads = Threads(
        count := cpu_threads(container, node.host_cpus), pick_cores(count, node.host_cpus, core_load)
    )
    base = base_env(image, node, pod_root, threads)
    if (mounted_tmp := table.rewrite("/tmp")) != "/tmp":
        base["TMPDIR"] = mounted_tmp
    env = container_env(container, facts, refs, base, table.rewrite)
    command = list(container.get("command") or image.entrypoint)
    args = list(container.get("args") or [])  # the images in the table have no default CMD
    words = [expand(table.rewrite(word), env.get) for word in [*command, *args]]
    if not words:
        raise ConfigError(f"container {container['name']}: no command")
    search = env.get("PATH", base["PATH"]).split(":")
    executable = which(words[0], search)
    if executable is None:
        raise ConfigError(f'exec: "{words[0]}": executable file not found in $PATH')
    cwd = table.path(container["workingDir"], pod_root) if container.get("workingDir") else pod_root / "fs"
    ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}
    return ContainerPlan(
        name=container["name"],
        image=container.get("image", ""),
        argv=(executable, *words[1:]),
        env=env,
        cwd=cwd,
        links=links,
        threads=threads,
        memory_limit=memory_limit(container),
        ports=ports,
    )


def plan_pod(
    pod: Mapping[str, Any],
    facts: PodFacts,
    refs: Refs,
    claims: Mapping[str, str | None],
    node: NodeEnv,
    pod_root: Path,
    hostpath_root: Path,
    core_load: Mapping[int, int],
    which: Callable[[str, Sequence[str]], str | None],
) -> tuple[dict[str, VolumePlan], list[ContainerPlan]]:
    """Volumes and containers of one pod; each container's cores count as load for the next one's choice."""
    volumes = volume_plans(pod, refs, claims, pod_root, hostpath_root)
    load = dict(core_load)
    plans = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        plan = plan_container(pod, container, facts, refs, volumes, node, pod_root, load, which)
        for core in plan.threads.cores:
            load[core] = load.get(core, 0) + 1
        plans.append(plan)
    return volumes, plans
