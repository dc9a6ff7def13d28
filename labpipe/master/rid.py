"""The run id counter, persisted in ``last_rid.pyon``.

A RID is in ``last_rid.pyon`` before it is handed out, so RIDs never repeat, even across
a crash of the master. The file is always replaced atomically (temporary file, rename):
a reader sees the old RID or the new one, never a torn file.

``next()`` also fsyncs it (file and folder): the RID is durable on its own. A scheduler
with a schedule store uses ``next(durable=False)`` instead: the RID becomes durable with
the submission's commit to the store, which keeps the highest RID given out
(``ScheduleStore.last_rid``), and the file is only kept up to date, behind: a
background write of the latest RID (at once, then at most once every ``WRITE_BEHIND``
seconds), never
fsynced, so that submits pay no file write (on ext4 a rename beside each synced commit
doubled its cost); ``flush()`` writes at once and waits (the scheduler's ``stop``
calls it). At start the scheduler
reserves RIDs up to that value too (``reserve_up_to``), so a ``last_rid.pyon`` that lost
its last writes (power loss), is older, or is missing does not make RIDs repeat.

A torn or garbled ``last_rid.pyon`` (empty, truncated, not an integer) is not fatal:
one warning, and the counter starts from nothing; the master then reserves RIDs up to
the highest in ``schedule.mdb`` (``meta/last_rid``) and ``history.mdb``.
"""

import asyncio
import contextlib
import logging
import os
import time

from labpipe.protocol import pyon

__all__ = ["RIDCounter"]

logger = logging.getLogger(__name__)

#: Seconds between writes of last_rid.pyon behind RIDs made durable by the store.
WRITE_BEHIND = 1.0


class RIDCounter:
    """Gives out increasing RIDs: each written to ``last_rid.pyon`` (and fsynced)
    before it is returned, or, for a caller that makes RIDs durable itself, written
    behind (module docstring)."""

    def __init__(self, path: str = "last_rid.pyon"):
        self.path = path
        self._last = _load(path)
        self._lock = asyncio.Lock()
        self._written = self._last
        self._writer: asyncio.Task[None] | None = None
        self._flush_now = asyncio.Event()
        self._wrote_at = -WRITE_BEHIND  # monotonic time of the last write behind

    @property
    def last(self) -> int:
        """The last RID given out (-1 when none was)."""
        return self._last

    async def next(self, durable: bool = True) -> int:
        """The next RID. ``durable``: written (atomically) and fsynced before it is
        returned, in a thread. Without it the RID is returned at once and written
        behind, and the caller must make it durable itself (the schedule store's
        commit) before acknowledging it."""
        if not durable:
            self._last += 1
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_behind(),
                                                   name="last_rid.pyon")
            return self._last
        async with self._lock:
            rid = self._last + 1
            try:
                await asyncio.to_thread(pyon.store_file, self.path, rid, durable)
            except OSError as e:  # a full disk, say: which file, and why
                raise OSError(e.errno, f"cannot write the next RID to {self.path}: "
                                       f"{e.strerror or e}") from None
            self._last = rid
            return rid

    async def _write_behind(self) -> None:
        while self._written != self._last:
            wait = self._wrote_at + WRITE_BEHIND - time.monotonic()
            if wait > 0:  # written less than WRITE_BEHIND ago: let more RIDs come
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_now.wait(), wait)
            rid = self._last
            try:
                await asyncio.to_thread(pyon.store_file, self.path, rid, False)
            except OSError as e:  # not fatal: the schedule store holds the last RID
                logger.warning("cannot write the last RID to %s: %s", self.path,
                               e.strerror or e)
                return
            self._written = rid
            self._wrote_at = time.monotonic()

    async def flush(self) -> None:
        """Wait for the write of the latest RID given out without ``durable``."""
        if self._writer is not None:
            self._flush_now.set()
            try:
                await asyncio.shield(self._writer)
            finally:
                self._flush_now.clear()

    def reserve_up_to(self, rid: int) -> None:
        """Never give out RIDs up to rid again (used when restoring a saved schedule)."""
        self._last = max(self._last, rid)


def _load(path: str) -> int:
    """The RID in path; -1 when missing, or (with a warning) torn or garbled."""
    if not os.path.exists(path):
        return -1
    try:
        last = pyon.load_file(path)
        if isinstance(last, bool) or not isinstance(last, int) or last < -1:
            raise ValueError(f"expected an integer RID, found {last!r:.50}")
        return last
    except Exception as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        logger.warning("%s is torn or garbled (%s): RIDs resume after the highest one "
                       "in schedule.mdb and history.mdb", path, reason)
        return -1
