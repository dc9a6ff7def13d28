"""Due dates as people type them (``-t``), and the due date the client understood.

- ``2026-11-21 14:30`` (ISO 8601, local time unless it names a zone);
- ``14:30`` or ``14:30:15``: the next such time: today if it is still ahead, else
  tomorrow (typed in the evening, ``09:00`` is tomorrow morning);
- ``+90``, ``+90s``, ``+10m``, ``+2h``, ``+1d``: from now.
"""

import math
import re
import time
from datetime import datetime, timedelta

from labpipe.client.formatting import format_duration

__all__ = ["parse_due_date", "describe_due_date", "DUE_DATE_FORMS"]

#: What ``-t`` accepts, for help texts and errors.
DUE_DATE_FORMS = "'2026-11-21 14:30', '14:30' (the next 14:30) or '+SECONDS' ('+10m', '+2h')"

_RELATIVE = re.compile(r"\+\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_due_date(text: str, now: float | None = None) -> float:
    """The UNIX time of a due date typed as text; ValueError (one line) naming the
    accepted forms."""
    now = time.time() if now is None else now
    stripped = text.strip()
    relative = _RELATIVE.fullmatch(stripped)
    if relative:
        seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        if math.isfinite(seconds):
            return now + seconds
    for fmt in ("%H:%M", "%H:%M:%S"):
        try:
            clock = datetime.strptime(stripped, fmt).time()
        except ValueError:
            continue
        today = datetime.fromtimestamp(now).date()
        due = datetime.combine(today, clock)
        if due.timestamp() <= now:
            due = datetime.combine(today + timedelta(days=1), clock)
        return due.timestamp()
    try:
        return datetime.fromisoformat(stripped).timestamp()
    except ValueError:
        pass
    raise ValueError(f"cannot read the due date {text!r}: use {DUE_DATE_FORMS}")


def describe_due_date(due: float, now: float | None = None) -> str:
    """``2026-11-22 09:00:00 (tomorrow, in 13h05m)``."""
    now = time.time() if now is None else now
    when = datetime.fromtimestamp(due)
    days = (when.date() - datetime.fromtimestamp(now).date()).days
    day = {0: "today", 1: "tomorrow", -1: "yesterday"}.get(days, when.strftime("%A"))
    distance = (f"in {format_duration(due - now)}" if due >= now
                else f"{format_duration(now - due)} ago")
    return f"{when.strftime('%Y-%m-%d %H:%M:%S')} ({day}, {distance})"
