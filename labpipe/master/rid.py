"""The run id counter, persisted in ``last_rid.pyon``.

A RID is on disk (file fsynced and renamed) before it is handed out, so RIDs never repeat,
even across a crash of the master.
"""

import asyncio
import os

from labpipe.protocol import pyon

__all__ = ["RIDCounter"]


class RIDCounter:
    """Gives out increasing RIDs, each persisted before it is returned."""

    def __init__(self, path: str = "last_rid.pyon"):
        self.path = path
        self._last = pyon.load_file(path) if os.path.exists(path) else -1
        if not isinstance(self._last, int):
            raise ValueError(f"{path}: expected an integer RID, found {self._last!r}")
        self._lock = asyncio.Lock()

    @property
    def last(self) -> int:
        """The last RID given out (-1 when none was)."""
        return self._last

    async def next(self) -> int:
        """The next RID, on disk before it is returned (the write runs in a thread)."""
        async with self._lock:
            rid = self._last + 1
            await asyncio.to_thread(pyon.store_file, self.path, rid)
            self._last = rid
            return rid

    def reserve_up_to(self, rid: int):
        """Never give out RIDs up to rid again (used when restoring a saved schedule)."""
        self._last = max(self._last, rid)
