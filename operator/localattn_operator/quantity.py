"""Kubernetes resource quantities ("512Mi", "1.5G", "500m", 2), parsed the way the apiserver parses them.

Pure and exact (Decimal, no floats): the operator turns `spec.memory.kvCacheMemory` into vLLM's
`--kv-cache-memory-bytes`, and validates every quantity of the spec before the apiserver would reject the
rendered Deployment (a 422 on apply that the user would otherwise only see in the operator's log).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}
# <sign><digits>[.<digits>]<suffix>, the suffix binary (Ki..Ei), decimal SI (n..E) or an exponent (e3, E-2).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$"
)


def parse_quantity(value: int | str) -> Decimal:
    """The quantity's exact value; raises ValueError with the accepted forms on anything else."""
    if isinstance(value, bool):  # bool is an int in Python, never a quantity
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"not a Kubernetes quantity: {value!r} (use e.g. 512Mi, 16Gi, 1.5G, 500m or a plain number)"
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # the pattern admits only valid decimals; kept for safety
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * (Decimal(10) ** int(suffix[1:]))


def quantity_to_bytes(value: int | str) -> int:
    """A memory quantity as whole bytes, rounded up as Kubernetes does (`500m` bytes is 1 byte)."""
    return math.ceil(parse_quantity(value))
