"""One LMDB file: opened with a map that grows as needed, written in order, from threads.

``LMDBFile(path)`` opens ``path`` as a single file (``subdir=False``). ``write_now(ops)``
commits puts and deletes in one transaction, doubling the map and retrying when it is
full (LMDB's default ``sync=True``: the transaction is on disk when it returns);
a failed commit raises an ``OSError`` naming the file (ENOSPC when the file system is
full); ``read_now(fn)`` runs ``fn(txn)`` in a read transaction. Both block: call them from a
thread. ``await write(ops)`` commits in a thread, in call order, and returns once its
ops are on disk; writes asked for while a commit runs share the next transaction (a
group commit: one sync for all of them; if that transaction fails, each write is retried
alone so that one bad write fails only its caller). ``await read(fn)`` reads in a
thread. Used by the dataset database, the schedule store and the history.
"""

import asyncio
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import lmdb

__all__ = ["LMDBFile", "DEFAULT_MAP_SIZE", "Ops", "Stored"]

#: One transaction's changes: (key, value) puts and (key, None) deletes.
Ops = list[tuple[bytes, bytes | None]]
#: What ``write`` takes: the ops, or a callable giving them (None: nothing to write).
OpsOrMaker = Ops | Callable[[], Ops | None]
#: What a read gives for a key or a value (bytes here, as no buffers are asked for).
Stored = bytes | memoryview
T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 4 * 1024 * 1024


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class LMDBFile:
    """One LMDB file (``subdir=False``) with a growing map; every operation in a thread,
    serialized (writes in the order they were asked for)."""

    def __init__(self, path: str | os.PathLike, map_size: int = DEFAULT_MAP_SIZE,
                 label: str = "lmdb"):
        self.path = os.fspath(path)
        self.label = label
        try:
            self.env = lmdb.open(self.path, subdir=False, map_size=map_size, max_dbs=0,
                                 lock=True)
        except lmdb.Error as e:
            raise RuntimeError(f"cannot open the {label} {self.path}: {e}") from e
        self._thread_lock = threading.Lock()  # no transaction while the map grows
        self._queued: list[tuple[OpsOrMaker, asyncio.Future[None]]] = []  # writes waiting
        self._committer: asyncio.Task[None] | None = None

    def write_now(self, ops: Ops) -> None:
        """Commit ops ((key, value) puts, (key, None) deletes) in one transaction."""
        with self._thread_lock:
            while True:
                txn = self.env.begin(write=True)
                try:
                    for key, data in ops:
                        if data is None:
                            txn.delete(key)
                        else:
                            txn.put(key, data)
                    txn.commit()
                    return
                except lmdb.MapFullError:
                    txn.abort()
                    size = self.env.info()["map_size"] * 2
                    logger.info("%s: map full, growing it to %d bytes", self.label, size)
                    self.env.set_mapsize(size)
                except lmdb.Error as e:
                    txn.abort()
                    raise self._disk_error(e) from e
                except BaseException:
                    txn.abort()
                    raise

    def _disk_error(self, error: lmdb.Error) -> OSError:
        """A failed commit as one line naming the file; a full file system said so
        (after a first ENOSPC, LMDB reports later commits as I/O errors)."""
        try:
            stat = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            full = stat.f_bavail * stat.f_frsize < (1 << 20)
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, f"cannot write the {self.label} {self.path}: "
                                         "no space left on the device")
        return OSError(errno.EIO, f"cannot write the {self.label} {self.path}: {error}")

    def read_now(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """fn(txn) in a read transaction."""
        with self._thread_lock:
            with self.env.begin() as txn:
                return fn(txn)

    async def write(self, ops: OpsOrMaker) -> None:
        """Commit ops after every write asked for before, in one transaction with the
        writes asked for meanwhile (ops may be a callable returning them, called once
        the earlier writes are committed or in the same transaction); returns once they
        are on disk. A cancelled caller's write is committed all the same."""
        future = asyncio.get_running_loop().create_future()
        self._queued.append((ops, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(),
                                                  name=f"{self.label} commits")
        await asyncio.shield(future)

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            prepared: list[tuple[Ops | None, asyncio.Future[None]]] = []
            for ops, future in batch:
                try:
                    prepared.append((ops() if callable(ops) else ops, future))
                except Exception as e:
                    _settle(future, e)
            merged = [op for ops, _ in prepared for op in ops or ()]
            try:
                if merged:  # else: the earlier batches, committed, were what they waited for
                    await asyncio.to_thread(self.write_now, merged)
            except Exception:
                if len(prepared) > 1:
                    await self._commit_one_by_one(prepared)
                    continue
                for _, future in prepared:
                    _settle(future, sys.exc_info()[1])
                continue
            for _, future in prepared:
                _settle(future, None)

    async def _commit_one_by_one(self,
                                 prepared: list[tuple[Ops | None, asyncio.Future[None]]]
                                 ) -> None:
        for ops, future in prepared:
            try:
                if ops:
                    await asyncio.to_thread(self.write_now, ops)
            except Exception as e:
                _settle(future, e)
            else:
                _settle(future, None)

    async def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        return await asyncio.to_thread(self.read_now, fn)

    def items_now(self) -> list[tuple[Stored, Stored]]:
        return self.read_now(lambda txn: list(txn.cursor().iternext()))

    def close(self) -> None:
        with self._thread_lock:
            self.env.close()
