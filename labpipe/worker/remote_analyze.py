"""An ``@offload_analyze`` experiment's ``analyze``, run on the lab's Dask cluster.

The worker (``child.py``) sends the analysis and waits for it; the master's analyze
stage is free meanwhile (``docs/dask.md``). Three steps:

- ``send_analysis(runner, offloader)``: the experiment is pickled (cloudpickle; its
  file's module by value) with its managers and devices left out: the device manager,
  the argument manager and every device the run was given (``scheduler`` and ``ccb``
  included) become stand-ins that raise one clear error when used on the cluster, and
  the dataset manager a fresh one holding the datasets the run set and read
  (``export_state``, ``archive``). The run's own offloaded results it holds are inputs
  of the analysis's task: Dask starts it once they are there, and they are ready
  ``Offloaded`` on the cluster. An attribute that cannot be pickled fails here, naming
  it.
- ``analyze_on_cluster(...)`` (on a Dask worker): loads the experiment, calls its
  ``analyze``, and returns the datasets it set or changed, the dataset mods it made (in
  order), its log records (those of its own thread, at the run's log level), the error
  if it raised, and the Dask worker's address.
- ``take_analysis(runner, result)`` (back in the worker): the datasets are adopted, the
  mods sent to the master and the log records logged, so that the results file the
  worker then writes is the one a local analyze would have written.

The cluster's workers need labpipe (the same version) and what the analysis imports.
What the analysis prints goes to the Dask worker's output, not into the run's log.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from labpipe.worker.datasets import DatasetManager, DatasetNotFoundError
from labpipe.worker.offload import (Offloaded, Offloader, future_of, ready, send_by_value,
                                    wrap_future)
from labpipe.worker.runner import one_line

if TYPE_CHECKING:
    from labpipe.protocol.sync import PathMod
    from labpipe.worker.runner import ExperimentRunner

__all__ = ["send_analysis", "analyze_on_cluster", "take_analysis", "NotOnCluster"]


class NotOnCluster:
    """What a device (or a manager the cluster has not) is in an offloaded analysis:
    any use raises ``RuntimeError`` naming it."""

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_what", what)

    def __repr__(self) -> str:
        return f"<{object.__getattribute__(self, '_what')}: not on the Dask cluster>"

    def _refuse(self) -> RuntimeError:
        return RuntimeError(f"{object.__getattribute__(self, '_what')} is not available "
                            f"in an offloaded analyze: devices and arguments stay with "
                            f"the run's worker (use them in run(), keep what analyze "
                            f"needs in attributes or datasets)")

    def __getattr__(self, name: str) -> Any:
        raise self._refuse()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        """The manager's ``get``: refused."""
        raise self._refuse()


class _ClusterDatasets(DatasetManager):
    """The dataset manager on the cluster: the keys analyze touched are recorded."""

    def __init__(self, mods: list[PathMod]) -> None:
        super().__init__(mods.append, self._not_here)
        self.touched: list[str] = []

    @staticmethod
    def _not_here(key: str) -> tuple:
        raise DatasetNotFoundError(
            f"dataset {key!r} is not on the Dask cluster: an offloaded analyze sees the "
            f"datasets its run set, and those it read with archive=True")

    def _touch(self, key: str) -> None:
        if key not in self.touched:
            self.touched.append(key)

    def set(self, key: str, value: Any, metadata: dict | None = None,
            broadcast: bool = False, persist: bool = False, archive: bool = True) -> None:
        super().set(key, value, metadata, broadcast, persist, archive)
        self._touch(key)

    def mutate(self, key: str, index: Any, value: Any) -> None:
        super().mutate(key, index, value)
        self._touch(key)

    def append_to(self, key: str, value: Any) -> None:
        super().append_to(key, value)
        self._touch(key)


def _pickler_class() -> type:
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        """Leaves out the run's managers and devices, and its offloaded results
        (``persistent_id``)."""

        def __init__(self, file: io.BytesIO, left_out: dict[int, tuple[str, ...]]):
            super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
            self._left_out = left_out
            #: the Dask futures of the offloaded results met: the analysis's inputs
            self.futures: list[Any] = []
            self._future_ids: dict[int, int] = {}

        def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
            if isinstance(obj, Offloaded):
                # a Dask future unpickles only where Dask deserializes it: it is an
                # input of the analysis's task, which Dask gives as its result
                future = future_of(obj)
                if future is None:
                    return None  # computed here: it travels as itself
                index = self._future_ids.setdefault(id(obj), len(self.futures))
                if index == len(self.futures):
                    self.futures.append(future)
                return ("offloaded", index, obj.what)
            return self._left_out.get(id(obj))

    return Pickler


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, datasets: DatasetManager,
                 inputs: list[Any]) -> None:
        super().__init__(file)
        self._datasets = datasets
        self._inputs = inputs

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "offloaded":
            return ready(pid[2], self._inputs[pid[1]])
        if kind == "dataset_mgr":
            return self._datasets
        if kind == "device":
            return NotOnCluster(f"device {pid[1]!r}")
        if kind == "device_mgr":
            return NotOnCluster("the device manager")
        return NotOnCluster("the argument manager")


def _dumps(runner: ExperimentRunner) -> tuple[bytes, list[Any]]:
    """The pickled experiment, and the Dask futures it holds (as ``Offloaded``)."""
    experiment = runner.experiment
    left_out: dict[int, tuple[str, ...]] = {
        id(runner.device_mgr): ("device_mgr",), id(runner.dataset_mgr): ("dataset_mgr",),
        id(runner.argument_mgr): ("argument_mgr",)}
    for key, device in runner.device_mgr.handed_out().items():
        left_out[id(device)] = ("device", key)
    for cls in type(experiment).__mro__:
        send_by_value(cls)
    buffer = io.BytesIO()
    pickler = _pickler_class()(buffer, left_out)
    try:
        pickler.dump(experiment)
    except Exception as exc:
        culprit = _unpicklable_attribute(experiment, left_out)
        raise TypeError(f"analyze cannot be sent to the Dask cluster: "
                        f"{culprit or 'the experiment'} cannot be pickled "
                        f"({one_line(exc)})") from None
    return buffer.getvalue(), pickler.futures


def _unpicklable_attribute(experiment: object, left_out: dict[int, tuple[str, ...]]
                           ) -> str | None:
    """``self.NAME`` of the first attribute that does not pickle, if one does not."""
    for name, value in vars(experiment).items():
        try:
            _pickler_class()(io.BytesIO(), left_out).dump(value)
        except Exception:
            return f"self.{name}"
    return None


def send_analysis(runner: ExperimentRunner, offloader: Offloader) -> Offloaded:
    """Send the run's analyze to the cluster; its pending result (a dict for
    ``take_analysis``)."""
    client = offloader.client()
    payload, inputs = _dumps(runner)
    assert offloader.address is not None
    future = client.submit(
        analyze_on_cluster, payload, runner.dataset_mgr.export_state(),
        dict(runner.dataset_mgr.archive), int(runner.expid.get("log_level", logging.WARNING)),
        inputs, pure=False, key=f"labpipe-analyze-RID{runner.rid}-{uuid.uuid4().hex}")
    return wrap_future(future, "analyze()", offloader.address, check=False)


class _ThreadRecords(logging.Handler):
    """Keeps the log records of one thread (a Dask worker runs tasks side by side)."""

    def __init__(self, level: int, records: list[tuple[int, str, str, float]]) -> None:
        super().__init__(level)
        self._thread = threading.get_ident()
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread:
            return
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self._records.append((record.levelno, record.name, message, record.created))


def _worker_address() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().address)
    except (ImportError, ValueError):
        return "unknown"


def analyze_on_cluster(payload: bytes, state: dict[str, tuple[Any, dict, bool, bool]],
                       archive: dict[str, Any], log_level: int,
                       inputs: list[Any]) -> dict[str, Any]:
    """Runs on a Dask worker: the experiment's ``analyze``; what ``take_analysis``
    takes back (an error of analyze is returned, not raised, with what it set)."""
    mods: list[PathMod] = []
    datasets = _ClusterDatasets(mods)
    datasets.adopt_state(state)
    datasets.archive.update(archive)
    records: list[tuple[int, str, str, float]] = []
    handler = _ThreadRecords(log_level, records)
    root = logging.getLogger()
    root.addHandler(handler)
    saved_level = root.level
    root.setLevel(min(saved_level or logging.WARNING, log_level))
    error = None
    try:
        try:
            experiment = _Unpickler(io.BytesIO(payload), datasets, inputs).load()
        except Exception as exc:
            raise RuntimeError(f"the experiment cannot be loaded on the Dask worker: "
                               f"{one_line(exc)}") from exc
        experiment.analyze()
    except Exception as exc:
        error = (one_line(exc), traceback.format_exc())
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    return {"state": datasets.export_state(datasets.touched), "archive": datasets.archive,
            "mods": mods, "log": records, "error": error, "worker": _worker_address()}


def take_analysis(runner: ExperimentRunner, result: dict[str, Any]
                  ) -> tuple[tuple[str, str] | None, str]:
    """Make what the cluster's analyze did the run's own; returns (its error as (one
    line, traceback), or None; the Dask worker's address)."""
    for levelno, name, message, created in result["log"]:
        record = logging.makeLogRecord({"name": name, "levelno": levelno,
                                        "levelname": logging.getLevelName(levelno),
                                        "msg": message, "created": created})
        logging.getLogger(name).handle(record)
    runner.dataset_mgr.adopt_state(result["state"])
    runner.dataset_mgr.archive.update(result["archive"])
    runner.dataset_mgr.replay(result["mods"])
    error = result["error"]
    return (None if error is None else (str(error[0]), str(error[1]))), str(result["worker"])
