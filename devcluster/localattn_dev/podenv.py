"""A container's environment as kubelet builds it: envFrom, env (values, secret/configMap keys, downward
API) and `$(VAR)` expansion in env values, command and args.

Pure: the ConfigMaps and Secrets the pod refers to are passed in (`Refs`), so every rule below is tested
without a cluster. A missing reference raises `ConfigError`, which the runtime reports as kubelet does
(container waiting, reason `CreateContainerConfigError`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from localattn_operator.quantity import parse_quantity


class ConfigError(ValueError):
    """The container cannot be configured (a referenced ConfigMap, Secret or key is missing)."""


@dataclass(frozen=True)
class Refs:
    """The objects a pod refers to, by name, as bytes: ConfigMap `data` + decoded `binaryData`, decoded
    Secret `data` (volumes write the bytes; env decodes them as UTF-8)."""

    config_maps: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's values: `data` is base64 (what the API returns), `stringData` plain."""
    decoded = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    return {**decoded, **{k: v.encode() for k, v in (secret.get("stringData") or {}).items()}}


def config_map_data(config_map: Mapping[str, Any]) -> dict[str, bytes]:
    binary = {k: base64.b64decode(v) for k, v in (config_map.get("binaryData") or {}).items()}
    return {**binary, **{k: v.encode() for k, v in (config_map.get("data") or {}).items()}}


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """kubelet's `$(VAR)` expansion (third_party/forked/golang/expansion): `$(NAME)` becomes the value when
    NAME is defined and stays `$(NAME)` when not; `$$` is a literal `$`; any other `$` is kept."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:  # incomplete reference: kept verbatim
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : close]
                    value = lookup(name)
                    out.append(value if value is not None else f"$({name})")
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can expose about the pod once it runs."""

    name: str
    namespace: str
    uid: str
    node_name: str
    pod_ip: str
    host_ip: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pod: Mapping[str, Any], pod_ip: str, host_ip: str) -> PodFacts:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            node_name=spec.get("nodeName", ""),
            pod_ip=pod_ip,
            host_ip=host_ip,
            service_account=spec.get("serviceAccountName") or "default",
            labels=meta.get("labels") or {},
            annotations=meta.get("annotations") or {},
        )


def field_ref(path: str, facts: PodFacts) -> str:
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "spec.nodeName": facts.node_name,
        "spec.serviceAccountName": facts.service_account,
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    for prefix, values in (("metadata.labels", facts.labels), ("metadata.annotations", facts.annotations)):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return values.get(path[len(prefix) + 2 : -2], "")
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_ref(ref: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """`resourceFieldRef` (limits.cpu, requests.memory, ...): rounded up to the divisor, as kubelet does."""
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        value = "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def _lookup(kind: str, data: Mapping[str, Mapping[str, bytes]], ref: Mapping[str, Any]) -> str | None:
    source = data.get(ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if source is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{ref.get("name")}" not found')
    if ref.get("key") is not None:
        if ref["key"] not in source:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ref.get('name')}")
        return source[ref["key"]].decode(errors="replace")
    return None


def _same(text: str) -> str:
    return text


def container_env(
    container: Mapping[str, Any],
    facts: PodFacts,
    refs: Refs,
    base: Mapping[str, str] | None = None,
    rewrite: Callable[[str], str] = _same,
) -> dict[str, str]:
    """The container's environment: `base` (the image's), then envFrom, then env in order, each value
    expanded against what is defined so far (kubelet's order). `rewrite` maps container paths in the
    literal values (before expansion, so an expanded value is never rewritten twice)."""
    env: dict[str, str] = dict(base or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, data, key in (
            ("configmap", refs.config_maps, "configMapRef"),
            ("secret", refs.secrets, "secretRef"),
        ):
            if key in source:
                ref = source[key]
                values = data.get(ref.get("name", ""))
                if values is None:
                    if not ref.get("optional"):
                        raise ConfigError(f'{kind} "{ref.get("name")}" not found')
                    continue
                env.update({prefix + k: v.decode(errors="replace") for k, v in values.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(rewrite(str(item.get("value", ""))), env.get)
            continue
        source = item["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_ref(source["fieldRef"]["fieldPath"], facts)
        elif "resourceFieldRef" in source:
            value = resource_ref(source["resourceFieldRef"], container)
        elif "secretKeyRef" in source:
            value = _lookup("secret", refs.secrets, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _lookup("configmap", refs.config_maps, source["configMapKeyRef"])
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def referenced_names(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(ConfigMap names, Secret names) the pod's env, envFrom and volumes refer to: what the runtime fetches."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                config_maps.add(source["configMapRef"].get("name", ""))
            if "secretRef" in source:
                secrets.add(source["secretRef"].get("name", ""))
        for item in container.get("env") or []:
            value_from = item.get("valueFrom") or {}
            if "configMapKeyRef" in value_from:
                config_maps.add(value_from["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in value_from:
                secrets.add(value_from["secretKeyRef"].get("name", ""))
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            config_maps.add(volume["configMap"].get("name", ""))
        if "secret" in volume:
            secrets.add(volume["secret"].get("secretName", ""))
    return config_maps - {""}, secrets - {""}
