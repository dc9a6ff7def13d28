"""The master's dataset database: datasets in memory, persistent ones in one LMDB file.

Contract (``docs/internals.md``, RPC target ``dataset_db`` of ``wire-compat.md``):

- ``DatasetDB(path)`` opens (or creates) the LMDB file ``path`` (``dataset_db.mdb``,
  ``subdir=False``) and loads every persistent dataset. ``data`` is a Notifier over
  ``{key: (persist, value, metadata)}`` (the ``datasets`` notifier), a tuple per entry,
  metadata a dict (unit, scale, precision...).
- Coroutines ``set(key, value, persist=None, metadata=None)``, ``update(mod)`` and
  ``delete(key)`` change ``data`` (publishing mods), and for persistent datasets the
  file; ``update_soon(mod)`` does a change that needs neither at once (the workers'
  stream of broadcast sets), else gives ``update(mod)`` to await. ``get(key)`` gives the value, ``get_metadata(key)`` the metadata. ``close()``.
- Durability: a change to a persistent dataset is committed (LMDB transaction, synced
  to disk) before the coroutine that made it returns, and before its mod is published
  or the in-memory value changes, so a ``kill -9`` right after the reply, or after a
  subscriber saw the mod, loses nothing. Turning persist off deletes the dataset from the file;
  non-persistent datasets live in memory only.
- The event loop never waits for the disk: one writer thread commits. Changes are queued
  in the order they were made and committed in that order; changes queued while a commit
  is running go together into the next transaction (batching), and each caller is woken
  when the transaction holding its change is committed. The in-memory value (and the
  mod published) changes once that commit is done, changes in the order they were made
  (a non-persistent change queued behind a persistent one waits for it). A change is
  checked (on a private copy of the entry, for a mod inside a persistent entry) before
  anything is queued.
- The map grows by itself: a transaction that does not fit doubles the map size and is
  retried. There is no size cap but the disk.
- File format: LMDB key = the dataset key in UTF-8 (at most 511 bytes for a persistent
  dataset), LMDB value = the PYON text of ``{"value": value, "metadata": metadata}``.
  An entry that cannot be decoded at start is logged and ignored (left on disk).

``set``: ``persist=None`` keeps the dataset's flag (False for a new one);
``metadata=None`` keeps its metadata (``{}`` for a new one).

``update(mod)`` takes a mod in the ``datasets`` notifier's shape (what workers stream)
and applies it through the Notifier, so subscribers get the same mod:

- at the root (``path == []``): ``setitem`` (value ``(persist, value, metadata)``; a list
  of three is accepted and made a tuple) or ``delitem``;
- inside an entry (``path`` starting ``[key, 1]`` for the value, ``[key, 2]`` for the
  metadata): any action, as ``sync.apply_mod`` would do it. The entry tuple itself cannot
  be changed in place: replace it with a root ``setitem``.
- one exception: numpy arrays cannot grow, so an ``append`` to a numpy array appends a
  row (``labpipe.worker.datasets.append_row``) and publishes a ``setitem`` of the new
  array in its parent (for a dataset value, of the whole entry at the root), which every
  subscriber, ARTIQ's included, can apply.

Unknown keys raise ``DatasetNotFoundError`` (a KeyError); malformed mods ValueError. If
a commit fails (disk full, I/O error) the caller gets the error and nothing changes in
memory or for subscribers.

``read_datasets(path)`` reads the persistent datasets of a file without writing to it
(``labpipe-run`` uses it): LMDB opened read-only, so a running master's database can
be read meanwhile, and so can a file that may not be written.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import lmdb
import numpy

from labpipe.master.lmdb_file import LMDBFile
from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier, PathMod, apply_mod
from labpipe.worker.datasets import DatasetNotFoundError, append_row

__all__ = ["DatasetDB", "DatasetNotFoundError", "DEFAULT_MAP_SIZE", "read_datasets"]

logger = logging.getLogger(__name__)

#: Initial LMDB map size; it doubles whenever a transaction does not fit.
DEFAULT_MAP_SIZE = 16 * 1024 * 1024
#: Most changes committed in one transaction.
MAX_BATCH = 10_000

#: The fields each mod action needs besides "action" and "path".
_FIELDS = {"setitem": ("key", "value"), "delitem": ("key",), "append": ("x",),
           "insert": ("i", "x"), "pop": ("i",)}

# One change for the file: (LMDB key, PYON bytes to put, or None to delete).
_Op = tuple[bytes, bytes | None]
# A dataset: (persist, value, metadata).
Entry = tuple[bool, Any, dict[str, Any]]
# A queued write: its op, and the loop and future of the coroutine waiting for it.
_Request = tuple[_Op, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Writer:
    """The one thread that writes to the LMDB environment, committing batches in order."""

    def __init__(self, file: LMDBFile, label: str):
        self._file = file
        self._label = label
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"dataset_db writer {label}",
                                        daemon=True)
        self._thread.start()

    def submit(self, op: _Op) -> asyncio.Future[None]:
        """Queue op; the future is done when a committed transaction holds it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((op, loop, future))
        return future

    def stop(self) -> None:
        """Commit what is queued, then end the thread (blocks until it has ended)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                stopping = True
                batch.pop()
            if batch:
                self._commit_batch([request for request in batch if request is not None])

    def _commit_batch(self, batch: list[_Request]) -> None:
        try:
            self._commit([op for op, _, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                self._resolve(batch[0], e)
                return
            # One bad change must not fail the others: commit them one by one.
            for request in batch:
                try:
                    self._commit([request[0]])
                except Exception as e:
                    self._resolve(request, e)
                else:
                    self._resolve(request, None)
        else:
            for request in batch:
                self._resolve(request, None)

    def _commit(self, ops: list[_Op]) -> None:
        self._file.write_now(ops)

    @staticmethod
    def _resolve(request: _Request, error: BaseException | None) -> None:
        _, loop, future = request

        def resolve() -> None:
            if future.done():  # the caller was cancelled; the change is committed anyway
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        try:
            loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the caller's event loop is closed
            pass


def _traverse_plain(obj: Any, path: list[Any]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _check_entry(entry: Any) -> Entry:
    """A valid (persist, value, metadata) tuple from a mod's value, or ValueError."""
    if not isinstance(entry, (tuple, list)) or len(entry) != 3:
        raise ValueError("a dataset entry must be (persist, value, metadata)")
    persist, value, metadata = entry
    if not isinstance(persist, bool):
        raise ValueError(f"dataset persist flag must be a bool, not {type(persist).__name__}")
    if not isinstance(metadata, dict):
        raise ValueError(f"dataset metadata must be a dict, not {type(metadata).__name__}")
    return entry if isinstance(entry, tuple) else tuple(entry)


def _decode_entries(txn: lmdb.Transaction, path: str) -> dict[str, Entry]:
    """Every entry of the file (the format of the module docstring); one that cannot be
    decoded is logged and left out."""
    entries = {}
    for raw_key, raw_data in txn.cursor():
        try:
            key = bytes(raw_key).decode("utf-8")
            record = pyon.decode(bytes(raw_data).decode("ascii"))
            entries[key] = (True, record["value"], dict(record["metadata"]))
        except Exception as e:
            logger.error("%s: entry %r cannot be decoded and is ignored: %s",
                         path, raw_key, e)
    return entries


def read_datasets(path: str | os.PathLike[str]) -> dict[str, Entry]:
    """The persistent datasets of the file ``path``, ``{key: (True, value, metadata)}``,
    read without writing to it (a running master may have it open). A file that cannot
    be read (missing, not an LMDB file) raises ``RuntimeError``, one line naming it."""
    path = os.fspath(path)
    try:  # map_size=0: the map size the file was written with
        env = lmdb.open(path, subdir=False, readonly=True, lock=True, map_size=0,
                        max_dbs=0)
    except lmdb.Error as e:
        reason = str(e).removeprefix(f"{path}: ")  # lmdb names the file first
        raise RuntimeError(f"cannot read the dataset database {path}: {reason}") from None
    try:
        with env.begin() as txn:
            return _decode_entries(txn, path)
    finally:
        env.close()


class DatasetDB:
    """Datasets of the master; see the module docstring for the contract."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE):
        self.path = os.fspath(path)
        self._file = LMDBFile(self.path, map_size, "dataset database")
        self._env = self._file.env
        self._max_key_size = self._env.max_key_size()
        try:
            backing = self._load()
        except BaseException:
            self._env.close()
            raise
        self.data = Notifier(backing)
        self._writer: _Writer | None = _Writer(self._file, self.path)
        # changes queued (commit under way) and not yet applied in memory, in order
        self._applies: deque[tuple[asyncio.Future[None] | None, str, Callable[[], None]]] = \
            deque()
        #: key -> [entry as the queued changes leave it, private copy?, changes queued]
        self._overlay: dict[str, list[Any]] = {}
        # coroutines update_soon gave that have not ended (one never awaited keeps
        # update_soon on the slow path: safe, only slower)
        self._updates_due = 0

    def _load(self) -> dict[str, Entry]:
        with self._env.begin() as txn:
            return _decode_entries(txn, self.path)

    # -- reading

    def _entry(self, key: str) -> Entry:
        try:
            return self.data.raw_view[key]
        except (KeyError, TypeError):
            raise DatasetNotFoundError(f"dataset {key!r} does not exist") from None

    def get(self, key: str) -> Any:
        """The value of dataset key."""
        return self._entry(key)[1]

    def get_metadata(self, key: str) -> dict[str, Any]:
        """The metadata of dataset key."""
        return self._entry(key)[2]

    # -- writing

    @staticmethod
    def _check_key(key: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"a dataset key must be a non-empty str, not {key!r:.100}")

    def _lmdb_key(self, key: str) -> bytes:
        data = key.encode("utf-8")
        if len(data) > self._max_key_size:
            raise ValueError(f"dataset key {key[:40]!r}... is too long to persist "
                             f"({len(data)} bytes in UTF-8, at most {self._max_key_size})")
        return data

    def _disk_op(self, key: str, entry: Entry | None, was_persistent: bool) -> _Op | None:
        """The file change that makes the file match entry (None: nothing to do)."""
        if entry is not None and entry[0]:
            record = {"value": entry[1], "metadata": entry[2]}
            try:
                text = pyon.encode(record)
            except (TypeError, ValueError) as e:
                raise TypeError(f"dataset {key!r} cannot be persisted: {e}") from None
            return self._lmdb_key(key), text.encode("ascii")
        if was_persistent:
            return self._lmdb_key(key), None
        return None

    def _submit(self, op: _Op | None) -> asyncio.Future[None] | None:
        if op is None:
            return None
        if self._writer is None:
            raise RuntimeError(f"the dataset database {self.path} is closed")
        return self._writer.submit(op)

    # -- durable, ordered publication: a change reaches memory (and subscribers) only
    # once its commit is done, in the order the changes were made

    def _state(self, key: str) -> Entry | None:
        """The entry of key as the changes queued so far leave it (None: no dataset)."""
        try:
            if key in self._overlay:
                return self._overlay[key][0]
            return self.data.raw_view.get(key)
        except TypeError:  # an unhashable key names no dataset
            return None

    def _enqueue(self, key: str, entry: Entry | None, op: _Op | None,
                 apply: Callable[[], None], private: bool = False
                 ) -> asyncio.Future[None] | None:
        """Queue a change: op for the file (or None), apply() to do it in memory (and
        publish it) once op and every change queued before are committed."""
        future = self._submit(op)
        held = self._overlay.get(key)
        self._overlay[key] = [entry, private, (held[2] if held else 0) + 1]
        self._applies.append((future, key, apply))
        if future is None:
            self._drain()
        else:
            future.add_done_callback(lambda _: self._drain())
        return future

    def _drain(self) -> None:
        while self._applies:
            future, key, apply = self._applies[0]
            if future is not None and not future.done():
                return
            self._applies.popleft()
            held = self._overlay.get(key)
            if held is not None:
                held[2] -= 1
                if held[2] == 0:
                    del self._overlay[key]
            if future is not None and (future.cancelled() or future.exception()):
                continue  # not on disk: not applied (the caller gets the error)
            try:
                apply()
            except Exception:
                logger.exception("dataset %r: a change could not be applied", key)

    async def _wait(self, future: asyncio.Future[None] | None) -> None:
        if future is not None:
            # shielded: a cancelled caller's change is still applied once committed
            await asyncio.shield(future)

    async def _replace(self, key: str, entry: Entry | None) -> None:
        """Set (or, with None, delete) the entry of key: on disk, then in memory."""
        old = self._state(key)
        op = self._disk_op(key, entry, old is not None and old[0])

        def apply() -> None:
            if entry is None:
                del self.data[key]
            else:
                self.data[key] = entry
        await self._wait(self._enqueue(key, entry, op, apply))

    async def set(self, key: str, value: Any, persist: bool | None = None,
                  metadata: dict[str, Any] | None = None) -> None:
        """Set a dataset; returns once a persistent one is committed to disk, and
        publishes the change only then.

        persist None keeps the current flag (False for a new dataset); metadata None keeps
        the current metadata ({} for a new dataset).
        """
        self._check_key(key)
        old = self._state(key)
        if persist is None:
            persist = old[0] if old is not None else False
        if metadata is None:
            metadata = old[2] if old is not None else {}
        await self._replace(key, _check_entry((persist, value, metadata)))

    async def delete(self, key: str) -> None:
        """Delete a dataset; returns once it is gone from disk if it was persistent."""
        if self._state(key) is None:
            raise DatasetNotFoundError(f"dataset {key!r} does not exist")
        await self._replace(key, None)

    def update_soon(self, mod: dict[str, Any]) -> Awaitable[None] | None:
        """``update(mod)``, done at once (returning None) when it needs neither the file
        nor to wait behind another change: a root ``setitem`` of an entry that is not
        persistent, of a dataset that was not, with nothing queued (what a worker's
        broadcast sets are); otherwise a coroutine doing ``update(mod)``, to be awaited.
        Never ahead of the change of an earlier call whose coroutine has not ended.
        Refuses what ``update`` refuses, with the same errors."""
        if (type(mod) is dict and mod.get("action") == "setitem" and mod.get("path") == []
                and not self._applies and not self._updates_due and "value" in mod):
            key = mod.get("key")
            if type(key) is str and key:
                entry = _check_entry(mod["value"])
                old = self._state(key)
                if not entry[0] and (old is None or not old[0]):
                    self.data[key] = entry  # what _enqueue then _drain would do now
                    return None
        self._updates_due += 1
        return self._update_due(mod)

    async def _update_due(self, mod: dict[str, Any]) -> None:
        try:
            await self.update(mod)
        finally:
            self._updates_due -= 1

    async def update(self, mod: dict[str, Any]) -> None:
        """Apply one mod of the datasets notifier's shape (rules in the module docstring)."""
        if not isinstance(mod, dict) or mod.get("action") not in _FIELDS:
            raise ValueError(f"not a dataset mod: {mod!r:.200}")
        action, path = mod["action"], mod.get("path")
        if not isinstance(path, list):
            raise ValueError(f"dataset mod without a path list: {mod!r:.200}")
        missing = [name for name in _FIELDS[action] if name not in mod]
        if missing:
            raise ValueError(f"{action} mod without {', '.join(missing)}: {mod!r:.200}")
        checked = cast(PathMod, mod)  # its action and that action's fields are there
        if not path:
            if action == "setitem":
                self._check_key(mod["key"])
                await self._replace(mod["key"], _check_entry(mod["value"]))
            elif action == "delitem":
                await self.delete(mod["key"])
            else:
                raise ValueError(f"a {action!r} mod cannot apply to the datasets dict itself")
            return
        key = path[0]
        entry = self._state(key)
        if entry is None:
            raise DatasetNotFoundError(f"dataset {key!r} does not exist")
        if len(path) < 2 or path[1] not in (1, 2):
            raise ValueError(f"dataset {key!r}: a mod must change the value (path [key, 1, "
                             f"...]) or the metadata ([key, 2, ...]), not the entry tuple")
        if not entry[0] and key not in self._overlay and not self._applies:
            self._apply_inside(path, checked)  # in memory only, nothing queued: at once
            return
        # the entry as this mod leaves it, worked out on a private copy: the file gets
        # it, memory gets the mod once it is committed (a failing mod changes nothing)
        held = self._overlay.get(key)
        private = held is not None and held[1]
        new = self._applied_copy(entry if private else copy.deepcopy(entry), path,
                                 copy.deepcopy(checked))
        op = self._disk_op(key, new, entry[0]) if entry[0] else None
        await self._wait(self._enqueue(key, new, op,
                                       lambda: self._apply_inside(path, checked), private=True))

    @staticmethod
    def _applied_copy(entry: Entry, path: list[Any], mod: PathMod) -> Entry:
        """entry (a private copy) with mod applied, as ``_apply_inside`` would."""
        action = mod["action"]
        persist, value, metadata = entry
        parts: list[Any] = [persist, value, metadata]
        try:
            inner = path[1:]
            container = _traverse_plain(parts, inner)
            if mod["action"] == "append" and isinstance(container, numpy.ndarray):
                grown = append_row(container, mod["x"])
                _traverse_plain(parts, inner[:-1])[inner[-1]] = grown
            else:
                if isinstance(container, tuple):
                    raise TypeError("a tuple cannot be modified")
                at_container = mod.copy()
                at_container["path"] = []
                apply_mod(container, at_container)
        except (LookupError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"dataset {path[0]!r}: cannot apply the {action} mod at path "
                             f"{path}: {type(e).__name__}: {e}") from None
        if not isinstance(parts[2], dict):
            raise ValueError(f"dataset {path[0]!r}: the metadata must stay a dict")
        return (parts[0], parts[1], parts[2])

    def _apply_inside(self, path: list[Any], mod: PathMod) -> None:
        action = mod["action"]
        try:
            view = self._view(path)
            if mod["action"] == "setitem":
                view[mod["key"]] = mod["value"]
            elif mod["action"] == "delitem":
                del view[mod["key"]]
            elif mod["action"] == "append":
                if isinstance(view.raw_view, numpy.ndarray):
                    self._append_to_array(path, mod["x"])
                else:
                    view.append(mod["x"])
            elif mod["action"] == "insert":
                view.insert(mod["i"], mod["x"])
            else:
                view.pop(mod["i"])
        except (LookupError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"dataset {path[0]!r}: cannot apply the {action} mod at path "
                             f"{path}: {type(e).__name__}: {e}") from None

    def _append_to_array(self, path: list[Any], x: Any) -> None:
        array = append_row(self._at(path), x)
        if len(path) == 2:  # the dataset's value, inside the entry tuple: replace the entry
            persist, _, metadata = self.data.raw_view[path[0]]
            self.data[path[0]] = (persist, array, metadata)
        else:
            self._view(path[:-1])[path[-1]] = array

    def _view(self, path: list[Any]) -> Notifier:
        view = self.data
        for k in path:
            view = view[k]
        return view

    def _at(self, path: list[Any]) -> Any:
        return self._view(path).raw_view

    def close(self) -> None:
        """Commit what is queued, stop the writer thread and close the file."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
            self._env.close()
