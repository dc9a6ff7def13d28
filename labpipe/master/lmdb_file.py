"""One LMDB file: opened with a map that grows as needed, written in order, from threads.

``LMDBFile(path)`` opens ``path`` as a single file (``subdir=False``). ``write_now(ops)``
commits puts and deletes in one transaction, doubling the map and retrying when it is
full (LMDB's default ``sync=True``: the transaction is on disk when it returns);
``read_now(fn)`` runs ``fn(txn)`` in a read transaction. Both block: call them from a
thread (``await write(ops)`` / ``await read(fn)`` do, serialized in call order). Used by
the dataset database, the schedule store and the history.
"""

import asyncio
import logging
import os
import threading

import lmdb

__all__ = ["LMDBFile", "DEFAULT_MAP_SIZE"]

logger = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 4 * 1024 * 1024


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
        self._lock = asyncio.Lock()

    def write_now(self, ops: list[tuple[bytes, bytes | None]]):
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
                except BaseException:
                    txn.abort()
                    raise

    def read_now(self, fn):
        """fn(txn) in a read transaction."""
        with self._thread_lock:
            with self.env.begin() as txn:
                return fn(txn)

    async def write(self, ops):
        """Commit ops after every write asked for before (ops may be a callable
        returning them, called once the earlier writes are done)."""
        async with self._lock:
            if callable(ops):
                ops = ops()
            if ops:
                await asyncio.to_thread(self.write_now, ops)

    async def read(self, fn):
        return await asyncio.to_thread(self.read_now, fn)

    def items_now(self) -> list[tuple[bytes, bytes]]:
        return self.read_now(lambda txn: list(txn.cursor().iternext()))

    def close(self):
        with self._thread_lock:
            self.env.close()
