"""Starting worker processes from a warm template.

Each run gets a fresh process for isolation, but not a cold interpreter: processes are
forked from a template process (``forkserver.py``) that has already imported the heavy
modules (numpy, h5py, bluesky, ophyd and labpipe's worker code). Starting a worker then
costs a fork and a few milliseconds instead of hundreds of them. The repository's
examining processes come from the same template.

The template is started by ``warm_up()`` (the master calls it at start so that the first
run is fast too) or on the first ``start_worker``; it is restarted if it dies.

Even a fork from the template costs milliseconds, so ``take_worker()`` hands out a
process that was started ahead of time and starts the next one in a background thread.
A spare is never reused: every run still gets a process no other run has touched. A
spare whose master goes away sees the end of its pipe and exits.
"""

import atexit
import collections
import importlib.util
import logging
import threading
from collections.abc import Callable

from labpipe.worker.forkserver import ForkServer

__all__ = ["PRELOAD", "BLUESKY_PRELOAD", "preload", "template", "use_bluesky",
           "uses_bluesky", "start_process", "start_worker", "take_worker",
           "take_ready_worker", "discard_spares", "warm_up", "on_process_started"]

#: Modules every template imports once. Optional ones are skipped when absent.
PRELOAD = ["labpipe.worker.child", "labpipe.experiment", "labpipe.worker.examine",
           "labpipe.master.repository.examine_child", "numpy", "h5py"]
#: Imported as well once the lab uses bluesky or ophyd (``use_bluesky``). They double
#: the template's memory, and every fork and exit of a worker pays for its size.
BLUESKY_PRELOAD = ["ophyd", "bluesky", "bluesky.plans", "ophyd.sim",
                   "labpipe.bluesky.session"]
#: Imported last: readies the template (HDF5 warm-up, ``gc.freeze``).
TEMPLATE_MODULE = "labpipe.worker.template"

logger = logging.getLogger(__name__)

_template: ForkServer | None = None
_with_bluesky = False
_template_lock = threading.Lock()

#: Called with the pid of every template and process started (see the module docstring).
on_process_started: Callable[[int], None] | None = None


def _started(pid: int | None) -> None:
    hook = on_process_started
    if hook is not None and pid is not None:
        try:
            hook(pid)
        except Exception as e:  # recording must never stop a run from starting
            logger.error("could not record process %d: %s", pid, e)


def preload(bluesky: bool) -> list[str]:
    """The modules a template imports, in order (those not installed left out)."""
    names = PRELOAD + (BLUESKY_PRELOAD if bluesky else []) + [TEMPLATE_MODULE]
    return [name for name in names if _importable(name)]


def template() -> ForkServer:
    """The current template process (its client), made on first use; not started yet."""
    global _template
    with _template_lock:
        if _template is None:
            _template = ForkServer(preload(_with_bluesky))
            atexit.register(_template.stop, wait=2.0)
        return _template


def uses_bluesky(modules) -> bool:
    """Whether bluesky or ophyd is among the module names (e.g. a device database's)."""
    return any(str(name).partition(".")[0] in ("bluesky", "ophyd") for name in modules)


def use_bluesky(wait: bool = False) -> None:
    """Have workers start from a template that has imported bluesky and ophyd too.

    The lab uses them (its device database names ophyd devices, or a run imported
    them): from now on they are preloaded. A new template is started in a background
    thread (or now, with wait) and replaces the current one once it is ready; workers
    already started keep running. Calls after the first do nothing.
    """
    global _with_bluesky
    with _template_lock:
        if _with_bluesky:
            return
        _with_bluesky = True
        if _template is None:  # not made yet: it will be made with bluesky
            return
    if wait:
        _replace_template()
    else:
        threading.Thread(target=_replace_template, name="labpipe-template-bluesky",
                         daemon=True).start()


def _replace_template():
    global _template
    new = ForkServer(preload(True))
    try:
        new.ensure_started()
    except Exception as e:
        logger.error("could not start a worker template with bluesky: %s", e)
        return
    _started(new.pid)
    atexit.register(new.stop, wait=2.0)
    with _template_lock:
        old, _template = _template, new
    logger.info("workers now start from a template that has imported bluesky and ophyd")
    _spares.renew()
    old.stop()  # it lives on until the processes it started have ended


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def warm_up():
    """Start the template now (it imports the preload list once), wait for it, and
    start a spare worker."""
    server = template()
    server.ensure_started()
    _started(server.pid)
    _spares.restart()


def start_process(target: str):
    """Fork a process from the template running ``target`` (``"module:function"``),
    called with the child's end of a duplex connection.

    Returns ``(process, connection)``: a ``forkserver.ForkedProcess`` and the parent's
    end of the connection.
    """
    server = template()
    process, conn = server.start(target)
    _started(server.pid)  # restarted, perhaps
    _started(process.pid)
    return process, conn


def start_worker():
    """Start a worker process running ``labpipe.worker.child.main``; see
    ``start_process``."""
    return start_process("labpipe.worker.child:main")


class _Spares:
    """Worker processes started ahead of time, handed out once each."""

    def __init__(self, count: int = 1):
        self.count = count
        self._ready = collections.deque()
        self._lock = threading.Lock()
        self._refilling = False
        self._refill_thread: threading.Thread | None = None
        self._stopped = False

    def take(self):
        item = self.take_ready()
        if item is None:
            item = start_worker()
        return item

    def take_ready(self):
        """A spare that is ready and alive, or None (then start one: ``take``); never
        blocks."""
        with self._lock:
            item = self._ready.popleft() if self._ready else None
        if item is not None and not item[0].is_alive():
            item[1].close()
            item = None
        self._refill()
        return item

    def _refill(self):
        with self._lock:
            if self._stopped or self._refilling or len(self._ready) >= self.count:
                return
            self._refilling = True
            self._refill_thread = threading.Thread(
                target=self._refill_loop, name="labpipe-spare-worker", daemon=True)
        self._refill_thread.start()

    def _refill_loop(self):
        try:
            while True:
                with self._lock:
                    if self._stopped or len(self._ready) >= self.count:
                        return
                try:
                    item = start_worker()
                except Exception as e:  # take() then starts one itself, and reports
                    logger.error("could not start a spare worker: %s", e)
                    return
                with self._lock:
                    self._ready.append(item)
        finally:
            with self._lock:
                self._refilling = False

    def renew(self):
        """Replace the spares started so far (by a template that was replaced)."""
        with self._lock:
            items, self._ready = list(self._ready), collections.deque()
        for process, conn in items:
            conn.close()  # the spare sees the end of its pipe and exits
        self._refill()

    def restart(self):
        """Keep a spare ready again (after discard)."""
        with self._lock:
            self._stopped = False
        self._refill()

    def discard(self):
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


_spares = _Spares()


def take_worker():
    """A worker process ready for its first command: ``(process, connection)``. May
    block (a fork, or a template to restart): call it from a thread."""
    return _spares.take()


def take_ready_worker():
    """A spare worker started ahead of time, or None when none is ready; never blocks
    (an event loop may call it)."""
    return _spares.take_ready()


def discard_spares():
    """Stop the spare workers and start no more (at shutdown)."""
    _spares.discard()
