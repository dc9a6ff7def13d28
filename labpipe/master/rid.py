"""The run id counter, persisted in ``last_rid.pyon``.

A RID is in ``last_rid.pyon`` before it is handed out, so RIDs never repeat, even across
a crash of the master. The file is always replaced atomically (temporary file, rename):
a reader sees the old RID or the new one, never a torn file.

``next()`` also fsyncs it (file and folder): the RID is durable on its own. A scheduler
with a schedule store uses ``next(durable=False)`` instead: the file is written but not
fsynced, and the RID becomes durable with the submission's commit to the store, which
keeps the highest RID given out (``ScheduleStore.last_rid``). At start the scheduler
reserves RIDs up to that value too (``reserve_up_to``), so a ``last_rid.pyon`` that lost
its last writes (power loss), is older, or is missing does not make RIDs repeat.
"""

import asyncio
import os

from labpipe.protocol import pyon

__all__ = ["RIDCounter"]


class RIDCounter:
    """Gives out increasing RIDs, each written to ``last_rid.pyon`` before it is
    returned."""

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

    async def next(self, durable: bool = True) -> int:
        """The next RID, written (atomically) before it is returned; the write runs in a
        thread. ``durable``: fsync it too. Without it the caller must make the RID
        durable itself (the schedule store's commit) before acknowledging it."""
        async with self._lock:
            rid = self._last + 1
            await asyncio.to_thread(pyon.store_file, self.path, rid, durable)
            self._last = rid
            return rid

    def reserve_up_to(self, rid: int):
        """Never give out RIDs up to rid again (used when restoring a saved schedule)."""
        self._last = max(self._last, rid)
