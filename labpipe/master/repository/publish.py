"""Publishing a new dict through a Notifier as the fewest mods.

``sync_dict(notifier, new)`` makes the notifier's dict equal to ``new`` with one
``delitem`` per key that went away and one ``setitem`` per key that is new or whose
value changed, and nothing for unchanged keys, so that subscribers of a 200-entry
``explist`` receive one line when one experiment changed, and none after a rescan that
changed nothing. Values compare equal when ``==`` says so or their PYON encodings are
the same (a NaN default must not republish its entry on every scan).
"""

from __future__ import annotations

from typing import Any

from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier

__all__ = ["sync_dict", "same"]


def same(a: Any, b: Any) -> bool:
    """Whether two wire values are the same for subscribers."""
    if a == b:
        return True
    try:
        return pyon.encode(a) == pyon.encode(b)
    except (TypeError, ValueError):
        return False


def sync_dict(notifier: Notifier, new: dict) -> int:
    """Publish the difference between the notifier's dict and ``new``; returns the mod count."""
    current = notifier.raw_view
    mods = 0
    for key in [k for k in current if k not in new]:
        del notifier[key]
        mods += 1
    for key, value in new.items():
        if key not in current or not same(current[key], value):
            notifier[key] = value
            mods += 1
    return mods
