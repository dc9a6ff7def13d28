"""Starting worker processes from a warm template.

Each run gets a fresh process for isolation, but not a cold interpreter: processes are
forked from a template process (``forkserver.py``) that has already imported the heavy
modules (numpy, h5py, bluesky, ophyd and labpipe's worker code). Starting a worker then
costs a fork and a few milliseconds instead of hundreds of them. The repository's
examining processes come from the same template.

A ``Launcher`` is owned by whoever runs workers (the master, on its exit stack; tests
own theirs) and closed explicitly by its owner: ``with Launcher() as launcher:``. Its
template is started by ``warm_up()`` (the master calls it at start so that the first
run is fast too) or on the first ``start_process``; it is restarted if it dies.
``close()`` stops the spares and the template(s): a template stops serving at once and
its process ends once the processes it started have ended (``ForkServer.stop``).
Nothing is left to the interpreter's exit, and what the master started never outlives
it whatever happens (``forkserver``'s watchdog pipe, ``PR_SET_PDEATHSIG``, process
groups; ``docs/internals.md``).

Even a fork from the template costs milliseconds, so ``take_worker()`` hands out a
process that was started ahead of time and starts the next one in a background thread.
A spare is never reused: every run still gets a process no other run has touched. A
spare whose master goes away sees the end of its pipe and exits.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from types import TracebackType

from labpipe.worker.forkserver import ForkedProcess, ForkServer, ForkServerError

__all__ = ["PRELOAD", "BLUESKY_PRELOAD", "Launcher", "preload", "uses_bluesky"]

#: Modules every template imports once. Optional ones are skipped when absent.
PRELOAD = ["labpipe.worker.child", "labpipe.experiment", "labpipe.worker.examine",
           "labpipe.worker.examine_child", "numpy", "h5py"]
#: Imported as well once the lab uses bluesky or ophyd (``use_bluesky``). They double
#: the template's memory, and every fork and exit of a worker pays for its size.
BLUESKY_PRELOAD = ["ophyd", "bluesky", "bluesky.plans", "ophyd.sim",
                   "labpipe.bluesky.session"]
#: Imported last: readies the template (HDF5 warm-up, ``gc.freeze``).
TEMPLATE_MODULE = "labpipe.worker.template"
#: The entry point of a run's worker process.
WORKER_TARGET = "labpipe.worker.child:main"
#: How long ``close()`` waits for each template process to end.
CLOSE_WAIT = 2.0

logger = logging.getLogger(__name__)

#: A started process and the parent's end of its connection.
Started = tuple[ForkedProcess, Connection]


def preload(bluesky: bool) -> list[str]:
    """The modules a template imports, in order (those not installed left out)."""
    names = PRELOAD + (BLUESKY_PRELOAD if bluesky else []) + [TEMPLATE_MODULE]
    return [name for name in names if _importable(name)]


def uses_bluesky(modules: Iterable[object]) -> bool:
    """Whether bluesky or ophyd is among the module names (e.g. a device database's)."""
    return any(str(name).partition(".")[0] in ("bluesky", "ophyd") for name in modules)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


class Launcher:
    """Worker processes forked from a warm template; see the module docstring.

    ``on_process_started(pid)``, when set, is called with the pid of every template
    and process started (the master records them in ``processes.pyon``). Thread-safe:
    processes are started from threads, never on the event loop.
    """

    def __init__(self, *, spares: int = 1, bluesky: bool = False,
                 on_process_started: Callable[[int], None] | None = None):
        self.on_process_started = on_process_started
        self._with_bluesky = bluesky
        self._template: ForkServer | None = None
        self._replacing: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._spares = _Spares(self.start_worker, spares)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _started(self, pid: int | None) -> None:
        hook = self.on_process_started
        if hook is not None and pid is not None:
            try:
                hook(pid)
            except Exception as e:  # recording must never stop a run from starting
                logger.error("could not record process %d: %s", pid, e)

    def template(self) -> ForkServer:
        """The current template process (its client), made on first use; not started
        yet."""
        with self._lock:
            if self._closed:
                raise ForkServerError("the worker launcher is closed")
            if self._template is None:
                self._template = ForkServer(preload(self._with_bluesky))
            return self._template

    def use_bluesky(self, wait: bool = False) -> None:
        """Have workers start from a template that has imported bluesky and ophyd too.

        The lab uses them (its device database names ophyd devices, or a run imported
        them): from now on they are preloaded. A new template is started in a
        background thread (or now, with wait) and replaces the current one once it is
        ready; workers already started keep running. Calls after the first do nothing.
        """
        with self._lock:
            if self._with_bluesky or self._closed:
                return
            self._with_bluesky = True
            if self._template is None:  # not made yet: it will be made with bluesky
                return
            if not wait:
                self._replacing = threading.Thread(
                    target=self._replace_template, name="labpipe-template-bluesky",
                    daemon=True)
                self._replacing.start()
        if wait:
            self._replace_template()

    def _replace_template(self) -> None:
        new = ForkServer(preload(True))
        try:
            new.ensure_started()
        except Exception as e:
            logger.error("could not start a worker template with bluesky: %s", e)
            return
        self._started(new.pid)
        old: ForkServer | None
        with self._lock:
            if self._closed:  # closed while the new one started: it is not needed
                old = new
            else:
                old, self._template = self._template, new
        if old is not new:
            logger.info("workers now start from a template that has imported bluesky "
                        "and ophyd")
            self._spares.renew()
        if old is not None:
            old.stop()  # it lives on until the processes it started have ended

    def preloaded_packages(self) -> list[str]:
        """The top-level packages the template imports (for people: ``numpy``, ...),
        labpipe's own left out."""
        packages = dict.fromkeys(name.partition(".")[0]
                                 for name in preload(self._with_bluesky))
        packages.pop("labpipe", None)
        return list(packages)

    def warm_up(self) -> None:
        """Start the template now (it imports the preload list once), wait for it, and
        start a spare worker. Blocks: call it from a thread."""
        server = self.template()
        server.ensure_started()
        self._started(server.pid)
        self._spares.restart()

    def start_process(self, target: str) -> Started:
        """Fork a process from the template running ``target`` (``"module:function"``),
        called with the child's end of a duplex connection.

        Returns ``(process, connection)``: a ``forkserver.ForkedProcess`` and the
        parent's end of the connection. Blocks (a fork, or a template to restart).
        """
        server = self.template()
        process, conn = server.start(target)
        self._started(server.pid)  # restarted, perhaps
        self._started(process.pid)
        return process, conn

    def start_worker(self) -> Started:
        """Start a run's worker process (``labpipe.worker.child.main``); see
        ``start_process``."""
        return self.start_process(WORKER_TARGET)

    def take_worker(self) -> Started:
        """A worker process ready for its first command: ``(process, connection)``.
        May block (a fork, or a template to restart): call it from a thread."""
        return self._spares.take()

    def take_ready_worker(self) -> Started | None:
        """A spare worker started ahead of time, or None when none is ready; never
        blocks (an event loop may call it)."""
        return self._spares.take_ready()

    def ready_spares(self) -> list[ForkedProcess]:
        """The spare worker processes waiting now."""
        return self._spares.ready()

    def discard_spares(self) -> None:
        """Stop the spare workers and start no more until the next ``warm_up`` (a
        master that borrowed this launcher does at its exit). Blocks."""
        self._spares.discard()

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Stop the spares and every template: they serve no more, and each template
        process ends once the processes it started have ended (waited for at most
        ``wait`` seconds each). Blocks: call it from a thread. Idempotent."""
        with self._lock:
            self._closed = True
            replacing, self._replacing = self._replacing, None
        if replacing is not None:
            replacing.join()  # a template half started would be left running
        self._spares.discard()
        with self._lock:
            template, self._template = self._template, None
        if template is not None:
            template.stop(wait=wait)


class _Spares:
    """Worker processes started ahead of time, handed out once each."""

    def __init__(self, start: Callable[[], Started], count: int = 1):
        self._start = start
        self.count = count
        self._ready: collections.deque[Started] = collections.deque()
        self._lock = threading.Lock()
        self._refilling = False
        self._refill_thread: threading.Thread | None = None
        self._stopped = True  # until restart()

    def take(self) -> Started:
        item = self.take_ready()
        if item is None:
            item = self._start()
        return item

    def take_ready(self) -> Started | None:
        """A spare that is ready and alive, or None (then start one: ``take``); never
        blocks."""
        with self._lock:
            item = self._ready.popleft() if self._ready else None
        if item is not None and not item[0].is_alive():
            item[1].close()
            item = None
        self._refill()
        return item

    def ready(self) -> list[ForkedProcess]:
        with self._lock:
            return [process for process, _ in self._ready]

    def _refill(self) -> None:
        with self._lock:
            if self._stopped or self._refilling or len(self._ready) >= self.count:
                return
            self._refilling = True
            thread = self._refill_thread = threading.Thread(
                target=self._refill_loop, name="labpipe-spare-worker", daemon=True)
        thread.start()

    def _refill_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopped or len(self._ready) >= self.count:
                        return
                try:
                    item = self._start()
                except Exception as e:  # take() then starts one itself, and reports
                    logger.error("could not start a spare worker: %s", e)
                    return
                with self._lock:
                    if self._stopped:  # discarded while it started
                        item[1].close()
                        return
                    self._ready.append(item)
        finally:
            with self._lock:
                self._refilling = False

    def renew(self) -> None:
        """Replace the spares started so far (by a template that was replaced)."""
        with self._lock:
            items, self._ready = list(self._ready), collections.deque()
        for process, conn in items:
            conn.close()  # the spare sees the end of its pipe and exits
        self._refill()

    def restart(self) -> None:
        """Keep a spare ready again (after discard)."""
        with self._lock:
            self._stopped = False
        self._refill()

    def discard(self) -> None:
        with self._lock:
            self._stopped = True
            thread = self._refill_thread
        if thread is not None:
            # a process half started when the master exits dies noisily: finish it
            thread.join(timeout=10)
        with self._lock:
            items, self._ready = list(self._ready), collections.deque()
        for process, conn in items:
            conn.close()  # the spare sees the end of its pipe and exits
            process.join(timeout=5)
