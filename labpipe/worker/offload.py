"""``scheduler.offload(fn, *args, **kwargs)``: a function run on the lab's Dask cluster.

The worker process holds the run's ``distributed.Client``, made on the first offload:
the scheduler's address comes from the master (``GetDaskScheduler``: ``dask_scheduler``
in ``labpipe.toml`` or ``--dask-scheduler``; ``docs/dask.md``). ``offload`` returns an
``Offloaded``, the pending result: ``result()`` waits for it (in ``analyze``, say), and
``set_dataset(key, offloaded)`` keeps it as the dataset's value-to-be, collected at the
latest when the analyze stage begins (``DatasetManager.collect_offloaded``).

A result must be what a dataset may hold: a PYON-able value or numpy arrays. Whatever
goes wrong on the cluster is an ``OffloadError`` with one line saying what: the
function raised (its type and message; the cluster's traceback is chained), the
scheduler is gone or cannot be reached, a Dask worker was lost running it, the result
is not PYON-able. ``distributed`` is imported on the first offload only.

The experiment's own functions (its module, and the modules beside it) are sent by
value (``cloudpickle.register_pickle_by_value``): the cluster's workers need labpipe and
the libraries the function imports, not the experiment's files.

``LocalOffloader`` is ``labpipe-run``'s stand-in (no master, no cluster): it runs the
function at once, in the process.
"""

from __future__ import annotations

import logging
import pickle
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy

from labpipe.protocol import pyon

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["Offloaded", "OffloadError", "Offloader", "LocalOffloader", "describe_failure",
           "send_by_value", "wrap_future", "check_result", "call_pickled", "future_of",
           "ready",
           "CONNECT_TIMEOUT"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the Dask scheduler when the run first offloads.
CONNECT_TIMEOUT = 10.0


class OffloadError(RuntimeError):
    """Work sent to the Dask cluster did not give a result; the message (one line)
    says why."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_failure(exc: BaseException, what: str, scheduler: str) -> str:
    """One line: why ``what`` (e.g. ``fit(...)``) failed on the cluster at scheduler."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    if isinstance(exc, KilledWorker):
        return (f"{what}: the Dask worker running it was lost (KilledWorker: the task "
                f"took down or outlived the workers it was given to)")
    if isinstance(exc, FutureCancelledError) or type(exc).__name__ == "CancelledError":
        reason = getattr(exc, "reason", None) or str(exc)
        if "scheduler-connection-lost" in str(reason) or "connection" in str(reason):
            return f"{what}: the Dask scheduler at {scheduler} is gone (connection lost)"
        return f"{what}: cancelled on the Dask cluster ({' '.join(str(reason).split())})"
    return f"{what} raised {_one_line(exc)}"


def check_result(value: Any) -> None:
    """Raise TypeError unless value may be a dataset's: numpy arrays, or PYON-able."""
    if isinstance(value, numpy.ndarray):
        return
    try:
        pyon.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the result is not PYON-able nor a numpy array ({exc})") from None


class Offloaded:
    """The pending result of an offloaded function (``scheduler.offload``)."""

    what: str

    def done(self) -> bool:
        """Whether the result (or the failure) is there."""
        raise NotImplementedError

    def result(self, timeout: float | None = None) -> Any:
        """The function's result, once it is there (at most timeout seconds: then
        ``TimeoutError``); ``OffloadError`` when it failed."""
        raise NotImplementedError


class _DaskOffloaded(Offloaded):
    def __init__(self, future: Future, what: str, scheduler: str, check: bool) -> None:
        self.future = future
        self.what = what
        self.scheduler = scheduler
        self._check = check

    def __repr__(self) -> str:
        return f"<Offloaded {self.what} on {self.scheduler}: {self.future.status}>"

    def done(self) -> bool:
        return bool(self.future.done())

    def _settled(self) -> Any:
        """The result of the done future (any exception is the cluster's)."""
        try:
            return self.future.result()
        except Exception as exc:
            raise OffloadError(describe_failure(exc, self.what, self.scheduler)) from exc

    def result(self, timeout: float | None = None) -> Any:
        from distributed.client import TimeoutError as DaskTimeout
        try:
            value = self.future.result(timeout=timeout)
        except (TimeoutError, DaskTimeout):
            if not self.future.done():
                raise TimeoutError(f"{self.what}: no result within {timeout} s") from None
            value = self._settled()  # it came as the wait ended, or the function's own
        except Exception as exc:
            raise OffloadError(describe_failure(exc, self.what, self.scheduler)) from exc
        if self._check:
            try:
                check_result(value)
            except TypeError as exc:
                raise OffloadError(f"{self.what}: {exc}") from None
        return value


def future_of(offloaded: Offloaded) -> Future | None:
    """The Dask future of an ``Offloaded`` (None: computed here)."""
    return offloaded.future if isinstance(offloaded, _DaskOffloaded) else None


def ready(what: str, value: Any) -> Offloaded:
    """An ``Offloaded`` whose result is value (an offloaded analysis's inputs)."""
    return _Ready(what, value)


def wrap_future(future: Future, what: str, scheduler: str, check: bool = True
                ) -> Offloaded:
    """A Dask future as an ``Offloaded`` (``check``: its result must be a dataset's)."""
    return _DaskOffloaded(future, what, scheduler, check)


class _Ready(Offloaded):
    """A result computed at once (``LocalOffloader``)."""

    def __init__(self, what: str, value: Any = None, error: BaseException | None = None):
        self.what = what
        self._value = value
        self._error = error

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise OffloadError(f"{self.what} raised {_one_line(self._error)}") \
                from self._error
        return self._value


def _describe_call(fn: Callable[..., Any]) -> str:
    return f"offloaded {getattr(fn, '__qualname__', None) or type(fn).__name__}()"


def send_by_value(obj: Any) -> None:
    """Have cloudpickle send the module of obj by value when it is an experiment file's
    (``importer.import_file`` names it ``file_import_...``): the cluster cannot import
    it. Modules beside the file are gone from ``sys.modules`` after its import, so
    cloudpickle sends their functions by value by itself."""
    import cloudpickle
    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is not None and module.__name__.startswith("file_import_"):
        cloudpickle.register_pickle_by_value(module)


def call_pickled(call: bytes) -> Any:
    """On a Dask worker: the call ``Offloader.submit`` pickled, made."""
    fn, args, kwargs = pickle.loads(call)
    return fn(*args, **kwargs)


class Offloader:
    """The run's Dask client, connected on the first ``submit``; ``get_address`` asks
    the master for the scheduler's address (``OffloadError`` when it has none)."""

    def __init__(self, get_address: Callable[[], str]) -> None:
        self._get_address = get_address
        self._client: Client | None = None
        self.address: str | None = None

    def client(self) -> Client:
        """The connected client (connecting now, at most ``CONNECT_TIMEOUT`` s)."""
        if self._client is None:
            address = self._get_address()
            try:
                from distributed import Client
            except ImportError:
                raise OffloadError(f"offload needs the distributed package (pip install "
                                   f"'labpipe[dask]'), which this worker cannot import "
                                   f"(the Dask scheduler is {address})") from None
            try:
                self._client = Client(address, timeout=CONNECT_TIMEOUT,
                                      set_as_default=False)
            except Exception as exc:
                raise OffloadError(f"cannot reach the Dask scheduler at {address}: "
                                   f"{_one_line(exc)}") from None
            self.address = address
        return self._client

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Offloaded:
        """Run ``fn(*args, **kwargs)`` on the cluster; its pending result."""
        if not callable(fn):
            raise TypeError(f"offload() needs a function, not a {type(fn).__name__}")
        client = self.client()
        send_by_value(fn)
        what = _describe_call(fn)
        import cloudpickle
        try:
            # pickled here with cloudpickle: distributed pickles a task's function by
            # reference when plain pickle can, and the cluster cannot import the
            # experiment's file
            call = cloudpickle.dumps((fn, args, kwargs))
            future = client.submit(call_pickled, call, pure=False,
                                   key=f"labpipe-{getattr(fn, '__name__', 'call')}-"
                                       f"{uuid.uuid4().hex}")
        except Exception as exc:
            raise OffloadError(f"{what}: cannot be sent to the Dask cluster: "
                               f"{_one_line(exc)}") from exc
        assert self.address is not None
        return _DaskOffloaded(future, what, self.address, check=True)

    def close(self) -> None:
        """Disconnect (quietly: a client whose scheduler is gone logs its reconnection
        attempts as errors)."""
        client, self._client = self._client, None
        if client is None:
            return
        quiet = logging.getLogger("distributed")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            client.close(timeout=2)
        except Exception:
            logger.debug("closing the Dask client failed", exc_info=True)
        finally:
            quiet.setLevel(level)


class LocalOffloader:
    """``offload`` without a master (``labpipe-run``): the function runs here, now."""

    address = "this process (no master)"

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Offloaded:
        what = _describe_call(fn)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            logger.debug("%s failed:\n%s", what, traceback.format_exc())
            return _Ready(what, error=exc)
        return _Ready(what, value)

    def close(self) -> None:
        pass
