"""The dataset manager an experiment sees inside the worker.

Contract (``docs/internals.md``): ``DatasetManager(send, get_remote)``.

- ``send(mod)`` streams one dataset mod, in the shape of the master's ``datasets``
  notifier, one way to the master: the manager never waits for a reply, so an experiment
  can update a broadcast dataset tens of thousands of times per second. Mods are sent in
  the order the experiment made its changes. Every value in a mod is a snapshot (numpy
  arrays, lists, dicts... are copied), so the experiment may keep mutating its own
  objects while the mod is still on its way.
- ``get_remote(key)`` fetches ``(persist, value, metadata)`` from the master, raising
  KeyError for an unknown key (its message is kept when it is a
  ``DatasetNotFoundError``).

Mods sent:

- ``set`` with broadcast or persist:
  ``{"action": "setitem", "path": [], "key": key, "value": (persist, value, metadata)}``
  (metadata is a dict, ``{}`` when none was given; persist implies broadcast).
- ``mutate`` of a broadcast dataset:
  ``{"action": "setitem", "path": [key, 1], "key": index, "value": value}``.
- ``append_to`` of a broadcast dataset: ``{"action": "append", "path": [key, 1], "x": value}``
  (an append mod, never the whole value).

For the results file: ``local`` maps key -> (value, metadata) for the datasets this run
set with archive on (the value object itself, so later mutations are archived), and
``archive`` maps key -> value for the datasets read from the master with
``get(key, archive=True)``. ``result_groups`` maps an extra results-file group name to
a function returning ``{key: value}`` for it, called when the results file is written
(``labpipe.bluesky`` registers ``bluesky`` there for the documents of the run's plans).
``plan_session(environment)`` gives the run's bluesky session, which ``run_plan`` asks
for: the manager, not the language, imports ``labpipe.bluesky``.

A value that is an ``Offloaded`` (``scheduler.offload``'s pending result) is kept as the
dataset's value-to-be: nothing is sent until it is collected, which ``get``,
``mutate``, ``append_to`` and ``get_metadata`` of that key do, and
``collect_offloaded()`` does for all (the worker calls it when the analyze stage
begins); the collected value is then set with the flags given, as by ``set``. A results
file written before (a failed run) holds the value if it is there, else a line saying
it was not collected.

Mutation rules (ARTIQ's, kept for compatibility):

- ``mutate(key, index, value)`` needs a dataset set in this run. ``index`` is an int (or
  a slice), a tuple ``(start, stop[, step])`` meaning that slice, or a tuple of such
  tuples meaning a multi-dimensional slice; the mod carries the resulting slice objects.
- ``append_to(key, value)`` on a list appends in place. On a numpy array of shape
  ``(n, ...)`` it appends ``value`` (of shape ``...``) as a new row along the first axis;
  numpy arrays cannot grow in place, so the dataset is replaced by a new array of shape
  ``(n + 1, ...)`` (dtype promoted as ``numpy.concatenate`` does) each time, which costs
  O(n): prefer a list for long streams of points. Read the current value back with
  ``get``; an array the experiment holds does not see the new row.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy

from labpipe.protocol.sync import PathMod
from labpipe.worker.offload import Offloaded, OffloadError

if TYPE_CHECKING:
    from labpipe.bluesky.session import PlanSession

__all__ = ["DatasetManager", "DatasetNotFoundError", "append_row", "snapshot"]

logger = logging.getLogger(__name__)

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)


class DatasetNotFoundError(KeyError):
    """A dataset key unknown both to this run and to the master."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "dataset not found"


def snapshot(value: Any) -> Any:
    """A copy of value that later mutations of value do not reach (cheap for scalars)."""
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, numpy.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def append_row(array: numpy.ndarray, value: Any) -> numpy.ndarray:
    """A new array: ``array`` (shape ``(n, ...)``) with ``value`` (shape ``...``) added as
    row n. The master applies append mods to numpy array datasets the same way."""
    row = numpy.asarray(value)[numpy.newaxis]
    try:
        return numpy.concatenate([array, row])
    except ValueError as e:
        raise ValueError(f"cannot append a value of shape {row.shape[1:]} to an array "
                         f"of shape {array.shape}: {e}") from None


def _as_index(index: Any) -> Any:
    """ARTIQ's mutate index: int/slice as is, (a, b[, c]) -> slice, nested tuples -> slices."""
    if isinstance(index, tuple):
        if index and isinstance(index[0], tuple):
            return tuple(slice(*e) for e in index)
        return slice(*index)
    return index


@dataclass
class _Pending:
    """A dataset whose value is still on the Dask cluster, with the flags of its set."""
    offloaded: Offloaded
    metadata: dict
    broadcast: bool
    persist: bool
    archive: bool

    def value_now(self) -> Any:
        """The value if it is there, else a line saying why not (for a results file)."""
        if not self.offloaded.done():
            return f"not collected: {self.offloaded.what} had not returned"
        try:
            return self.offloaded.result()
        except Exception as exc:
            return f"not collected: {exc}"


@dataclass
class _Own:
    """A dataset set in this run, with the flags of its last ``set``."""
    value: Any
    metadata: dict = field(default_factory=dict)
    broadcast: bool = False
    archive: bool = True


class DatasetManager:
    """Datasets of one run: local values, archive records and the stream to the master."""

    def __init__(self, send: Callable[[PathMod], None], get_remote: Callable[[str], tuple]):
        self._send = send
        self._get_remote = get_remote
        self._own: dict[str, _Own] = {}
        self._pending: dict[str, _Pending] = {}
        #: key -> value: datasets read from the master with archive=True.
        self.archive: dict[str, Any] = {}
        #: group name -> function giving {key: value}: extra groups of the results file.
        self.result_groups: dict[str, Callable[[], dict]] = {}

    @property
    def local(self) -> dict[str, tuple[Any, dict]]:
        """key -> (value, metadata): the datasets set in this run with archive on."""
        local = {key: (own.value, own.metadata) for key, own in self._own.items()
                 if own.archive}
        local.update((key, (pending.value_now(), pending.metadata))
                     for key, pending in self._pending.items() if pending.archive)
        return local

    def collect_offloaded(self) -> None:
        """Wait for every dataset whose value is an offloaded result, and set it;
        ``OffloadError`` naming the dataset when one failed (the others are kept)."""
        first_error = None
        for key in list(self._pending):
            try:
                self._collect(key)
            except Exception as exc:
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error

    def _collect(self, key: str) -> None:
        pending = self._pending.pop(key)
        try:
            value = pending.offloaded.result()
        except OffloadError as exc:
            raise OffloadError(f"dataset {key!r}: {exc}") from exc
        self.set(key, value, pending.metadata, pending.broadcast, pending.persist,
                 pending.archive)

    def export_state(self, keys: list[str] | None = None
                     ) -> dict[str, tuple[Any, dict, bool, bool]]:
        """key -> (value, metadata, broadcast, archive) of the datasets set in this
        run (those of keys only, when given): what an offloaded analysis starts from."""
        return {key: (own.value, own.metadata, own.broadcast, own.archive)
                for key, own in self._own.items() if keys is None or key in keys}

    def adopt_state(self, state: dict[str, tuple[Any, dict, bool, bool]]) -> None:
        """Take datasets as ``export_state`` gave them (from an offloaded analysis),
        sending nothing: the mods that analysis made are ``replay``-ed."""
        for key, (value, metadata, broadcast, archive) in state.items():
            self._own[key] = _Own(value, metadata, broadcast, archive)

    def replay(self, mods: list[PathMod]) -> None:
        """Send mods an offloaded analysis made, in order."""
        for mod in mods:
            self._send(mod)

    def set(self, key: str, value: Any, metadata: dict | None = None, broadcast: bool = False,
            persist: bool = False, archive: bool = True) -> None:
        """Set a dataset for this run; broadcast/persist also send it to the master.

        With persist (which implies broadcast) the master commits it to disk on arrival.
        With archive (the default) it goes into the results file's ``datasets/`` group.
        """
        if not isinstance(key, str):
            raise TypeError(f"dataset key must be a str, not {type(key).__name__}")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise TypeError(f"dataset {key!r}: metadata must be a dict, "
                            f"not {type(metadata).__name__}")
        broadcast = bool(broadcast or persist)
        if isinstance(value, Offloaded):
            self._own.pop(key, None)
            self._pending[key] = _Pending(value, metadata, broadcast, bool(persist),
                                          bool(archive))
            return
        self._pending.pop(key, None)
        self._own[key] = _Own(value, metadata, broadcast, bool(archive))
        if broadcast:
            self._send({"action": "setitem", "path": [], "key": key,
                        "value": (bool(persist), snapshot(value), snapshot(metadata))})

    def _mutation_target(self, key: str) -> _Own:
        if key in self._pending:
            self._collect(key)
        try:
            return self._own[key]
        except KeyError:
            raise DatasetNotFoundError(
                f"dataset {key!r} was not set in this run: set it before mutating it") from None

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """Set ``dataset[index] = value`` (index rules in the module docstring)."""
        own = self._mutation_target(key)
        index = _as_index(index)
        own.value[index] = value
        if own.broadcast:
            self._send({"action": "setitem", "path": [key, 1], "key": index,
                        "value": snapshot(value)})

    def append_to(self, key: str, value: Any) -> None:
        """Append value to a list dataset, or as a new row to a numpy array dataset."""
        own = self._mutation_target(key)
        if isinstance(own.value, numpy.ndarray):
            try:
                own.value = append_row(own.value, value)
            except ValueError as e:
                raise ValueError(f"dataset {key!r}: {e}") from None
        elif hasattr(own.value, "append"):
            own.value.append(value)
        else:
            raise TypeError(f"dataset {key!r}: cannot append to a {type(own.value).__name__} "
                            f"(only lists and numpy arrays)")
        if own.broadcast:
            self._send({"action": "append", "path": [key, 1], "x": snapshot(value)})

    def _remote(self, key: str) -> tuple:
        try:
            return self._get_remote(key)
        except DatasetNotFoundError:
            raise  # the getter said why (labpipe-run: no database)
        except KeyError:
            raise DatasetNotFoundError(f"dataset {key!r} does not exist") from None

    def get(self, key: str, archive: bool = False) -> Any:
        """The dataset's value: this run's own if it set it, else the master's.

        With archive, a value read from the master is recorded for the results file's
        ``archive/`` group (a value set by this run is already in ``datasets/``).
        """
        if key in self._pending:
            self._collect(key)
        own = self._own.get(key)
        if own is not None:
            return own.value
        _persist, value, _metadata = self._remote(key)
        if archive:
            if key in self.archive:
                logger.warning("dataset %r read again with archive=True: the archive keeps "
                               "the latest value", key)
            self.archive[key] = value
        return value

    def get_metadata(self, key: str) -> dict:
        """The dataset's metadata: this run's own if it set it, else the master's."""
        if key in self._pending:
            self._collect(key)
        own = self._own.get(key)
        if own is not None:
            return own.metadata
        return self._remote(key)[2]

    def plan_session(self, environment: Any) -> PlanSession:
        """The run's bluesky session (its RunEngine and callbacks, made on first use and
        shared by the experiment and its children): what ``run_plan`` and
        ``get_run_engine`` use. bluesky is imported here, once a plan runs."""
        from labpipe.bluesky.session import session_for
        return session_for(environment, self)
