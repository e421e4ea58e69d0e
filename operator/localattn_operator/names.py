"""The apiserver's syntax for the object names a spec refers to (ConfigMaps, Secrets, claims), so the
operator refuses a name the apiserver would, naming the field, before anything is rendered."""

from __future__ import annotations

import re

# apimachinery's IsDNS1123Subdomain: dot-separated lowercase labels, each starting and ending alphanumeric.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns_subdomain(name: str) -> bool:
    """A valid ConfigMap, Secret or PersistentVolumeClaim name (at most 253 characters)."""
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))
