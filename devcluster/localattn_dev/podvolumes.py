"""Where a pod's volumes live on this machine, and how its container paths are rewritten to reach them.

There are no mount namespaces here, so each pod gets its own root directory:

    <pod root>/volumes/<volume>/      emptyDir, and the files of configMap / secret volumes (read-only)
    <pod root>/fs<mountPath>          a symlink to the volume (or its subPath) for each volumeMount

and every absolute path under a mountPath that appears in the container's command, args, env values and
workingDir is rewritten to the `<pod root>/fs...` path (`MountTable.rewrite`). hostPath volumes and
PersistentVolumeClaims bound to a hostPath PersistentVolume map `<path>` to `<hostpath root>/<path>`
(`<state>/hostpath/...`), so a model store is shared read-only between pods while each pod's writable
state (emptyDir) is its own. Paths under such a shared mount are rewritten to the shared directory itself,
not the pod's link: every pod then names the model by the same path, as on a real cluster (vLLM keys its
compile cache by the model path). Pure: the referenced objects come in as data.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from localattn_dev.podenv import ConfigError, Refs


class VolumeError(ConfigError):
    """A volume cannot be set up yet (kubelet: the pod stays ContainerCreating, FailedMount)."""


@dataclass(frozen=True)
class VolumeFile:
    path: str  # relative to the volume directory
    content: bytes
    mode: int


@dataclass(frozen=True)
class VolumePlan:
    name: str
    kind: str  # emptyDir | configMap | secret | hostPath
    directory: Path  # where the volume's content is on this machine
    files: tuple[VolumeFile, ...] = ()  # written (read-only) for configMap / secret volumes


@dataclass(frozen=True)
class MountLink:
    mount_path: str
    link: Path  # <pod root>/fs<mountPath>
    target: Path  # the volume directory or its subPath
    read_only: bool
    shared: bool = False  # a hostPath (or PV) volume: the same directory for every pod

    @property
    def rewritten(self) -> Path:
        """What container paths under the mount become: a shared volume's own directory (so every pod
        names a file of the model store by the same path, as on a real cluster: vLLM's compile cache is
        keyed by the model path), else the pod's link."""
        return self.target if self.shared else self.link


def host_path(hostpath_root: Path, path: str) -> Path:
    """A hostPath `/var/lib/x` lives at `<hostpath root>/var/lib/x`."""
    return hostpath_root / str(PurePosixPath(path)).lstrip("/")


def _key_files(
    kind: str, name: str, data: Mapping[str, bytes] | None, source: Mapping[str, Any]
) -> tuple[VolumeFile, ...]:
    if data is None:
        if source.get("optional"):
            return ()
        raise VolumeError(f'{kind} "{name}" not found')
    # Read-only on a real node (the volume is mounted ro); here the write bits are dropped.
    default_mode = int(source.get("defaultMode", 0o644)) & 0o555
    items = source.get("items")
    if not items:
        return tuple(VolumeFile(k, v, default_mode) for k, v in sorted(data.items()))
    files = []
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f"{kind} {name}: no key {item['key']!r}")
        files.append(VolumeFile(item["path"], data[item["key"]], int(item.get("mode", default_mode)) & 0o555))
    return tuple(files)


def volume_plans(
    pod: Mapping[str, Any],
    refs: Refs,
    claims: Mapping[str, str | None],
    pod_root: Path,
    hostpath_root: Path,
) -> dict[str, VolumePlan]:
    """Every volume of the pod. `claims` maps a PVC name to its bound PV's hostPath (None: not bound, or a
    PV without hostPath; a PVC missing from it does not exist)."""
    plans: dict[str, VolumePlan] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        own = pod_root / "volumes" / name
        if "emptyDir" in volume:
            plans[name] = VolumePlan(name, "emptyDir", own)
        elif "configMap" in volume:
            source = volume["configMap"]
            ref = source.get("name", "")
            files = _key_files("configmap", ref, refs.config_maps.get(ref), source)
            plans[name] = VolumePlan(name, "configMap", own, files)
        elif "secret" in volume:
            source = volume["secret"]
            ref = source.get("secretName", "")
            files = _key_files("secret", ref, refs.secrets.get(ref), source)
            plans[name] = VolumePlan(name, "secret", own, files)
        elif "hostPath" in volume:
            plans[name] = VolumePlan(name, "hostPath", host_path(hostpath_root, volume["hostPath"]["path"]))
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in claims:
                raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
            path = claims[claim]
            if path is None:
                raise VolumeError(
                    f'persistentvolumeclaim "{claim}" is not bound to a hostPath PersistentVolume '
                    "(the dev cluster maps only hostPath volumes)"
                )
            plans[name] = VolumePlan(name, "hostPath", host_path(hostpath_root, path))
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeError(f"volume {name}: type {kinds} is not supported by the dev cluster's node agent")
    return plans


def mount_links(
    container: Mapping[str, Any], plans: Mapping[str, VolumePlan], pod_root: Path
) -> tuple[MountLink, ...]:
    links: list[MountLink] = []
    for mount in container.get("volumeMounts") or []:
        path = str(PurePosixPath(mount["mountPath"]))
        if not path.startswith("/") or path == "/":
            raise ConfigError(
                f"volumeMount {mount['name']}: mountPath {path!r} must be an absolute path below /"
            )
        plan = plans.get(mount["name"])
        if plan is None:
            raise ConfigError(f"volumeMount {mount['name']}: no volume of that name")
        target = plan.directory / mount["subPath"] if mount.get("subPath") else plan.directory
        links.append(
            MountLink(
                path,
                pod_root / "fs" / path.lstrip("/"),
                target,
                bool(mount.get("readOnly")),
                plan.kind == "hostPath",
            )
        )
    paths = sorted(link.mount_path for link in links)
    for outer, inner in itertools.pairwise(paths):
        if inner == outer or inner.startswith(outer + "/"):
            raise ConfigError(f"mountPaths {outer} and {inner} overlap (not supported by the dev cluster)")
    return tuple(links)


class MountTable:
    """Rewrites container paths: `/tmp/hf` under mountPath `/tmp` becomes `<pod root>/fs/tmp/hf`
    (`/models/m` under a hostPath/PV mount: `<hostpath root>/<path>/m`, the same for every pod).

    A mountPath matches at a path boundary only (`/tmpfoo` is not under `/tmp`) and only where a path starts
    (after start, whitespace, `=`, `:`, `,` or a quote), so `--flag=/tmp/x` and `a:/tmp/b` are rewritten too.
    """

    def __init__(self, links: tuple[MountLink, ...]) -> None:
        self._links = {link.mount_path: link for link in links}
        if links:
            alternatives = "|".join(re.escape(p) for p in sorted(self._links, key=len, reverse=True))
            self._pattern: re.Pattern[str] | None = re.compile(
                rf"(?:^|(?<=[\s=:,'\"]))(?P<mount>{alternatives})(?=$|[/\s:,;'\"])"
            )
        else:
            self._pattern = None

    def rewrite(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: str(self._links[m["mount"]].rewritten), text)

    def path(self, container_path: str, pod_root: Path) -> Path:
        """Where a container path (e.g. workingDir) is here: under a mount, its link; else `<pod root>/fs...`."""
        rewritten = self.rewrite(container_path)
        return (
            Path(rewritten) if rewritten != container_path else pod_root / "fs" / container_path.lstrip("/")
        )
