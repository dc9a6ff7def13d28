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

from labpipe.worker.forkserver import ForkServer

__all__ = ["PRELOAD", "template", "start_process", "start_worker", "take_worker",
           "discard_spares", "warm_up"]

#: Modules imported once in the template. Optional ones are skipped when absent.
PRELOAD = ["labpipe.worker.child", "labpipe.experiment", "labpipe.worker.examine",
           "labpipe.master.repository.examine_child", "numpy", "h5py", "ophyd", "bluesky",
           "bluesky.plans", "ophyd.sim", "labpipe.bluesky.session",
           "labpipe.worker.template"]  # the template module: last

logger = logging.getLogger(__name__)

_template: ForkServer | None = None
_template_lock = threading.Lock()


def template() -> ForkServer:
    """The template process (its client), made on first use; not started yet."""
    global _template
    with _template_lock:
        if _template is None:
            _template = ForkServer([m for m in PRELOAD if _importable(m)])
            atexit.register(_template.stop, wait=2.0)
        return _template


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def warm_up():
    """Start the template now (it imports the preload list once), wait for it, and
    start a spare worker."""
    template().ensure_started()
    _spares.restart()


def start_process(target: str):
    """Fork a process from the template running ``target`` (``"module:function"``),
    called with the child's end of a duplex connection.

    Returns ``(process, connection)``: a ``forkserver.ForkedProcess`` and the parent's
    end of the connection.
    """
    return template().start(target)


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
        with self._lock:
            item = self._ready.popleft() if self._ready else None
        if item is None or not item[0].is_alive():
            item = start_worker()
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
    """A worker process ready for its first command: ``(process, connection)``."""
    return _spares.take()


def discard_spares():
    """Stop the spare workers and start no more (at shutdown)."""
    _spares.discard()
