"""Go-style durations ("30s", "5m", "1h30m"), as Argo Rollouts and Flagger write them, and RFC 3339 times.

Pure helpers shared by the rollout modules; status stores times as RFC 3339 strings (as Kubernetes does), so
a restarted operator reads back exactly what it wrote.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_PART = re.compile(r"([0-9]+)([hms])")
_WHOLE = re.compile(r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$")
_UNIT = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in `text`; raises ValueError naming the accepted form."""
    if not text or not _WHOLE.match(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    return sum(int(n) * _UNIT[u] for n, u in _PART.findall(text))


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """The inverse of `format_time`; None for None or for a value that is not a time (hand-edited status)."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
