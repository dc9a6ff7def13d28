"""Starting worker processes from a warm template.

Each run gets a fresh process for isolation, but not a cold interpreter: processes are
forked from multiprocessing's forkserver, which has already imported the heavy modules
(numpy, h5py, bluesky, ophyd and labpipe's worker code). Starting a worker then costs a
fork and a few milliseconds instead of hundreds of them.

The forkserver is started by ``warm_up()`` (the master calls it at start so that the
first run is fast too) or on the first ``start_worker``.

Even a fork from the template costs several milliseconds of handshaking, so
``take_worker()`` hands out a process that was started ahead of time and starts the
next one in a background thread. A spare is never reused: every run still gets a
process no other run has touched. A spare whose master goes away sees the end of its
pipe and exits.
"""

import collections
import importlib.util
import multiprocessing
import threading

__all__ = ["PRELOAD", "context", "start_worker", "take_worker", "discard_spares",
           "warm_up"]

#: Modules imported once in the template. Optional ones are skipped when absent.
PRELOAD = ["labpipe.worker.child", "labpipe.experiment",
           # the master's main module: multiprocessing re-runs it in every worker
           "labpipe.master.main",
           "labpipe.master.repository.examine_child", "numpy", "h5py", "ophyd", "bluesky",
           "bluesky.plans", "ophyd.sim", "labpipe.bluesky.session",
           "labpipe.worker.template"]  # the template module: last

_context = None


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with the preload list set on first use."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        # multiprocessing re-runs the main module in every worker (the forkserver's own
        # "__main__" preload never takes effect in CPython 3.11), so the program that
        # starts workers keeps its main module light and guards its entry point with
        # `if __name__ == "__main__":` (see labpipe.master.main).
        ctx.set_forkserver_preload([m for m in PRELOAD if _importable(m)])
        _context = ctx
    return _context


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _noop():
    pass


def warm_up():
    """Start the forkserver now (it imports the preload list once), wait for it, and
    start a spare worker."""
    process = context().Process(target=_noop, daemon=True)
    process.start()
    process.join()
    _spares.restart()


def start_worker():
    """Start a worker process running ``labpipe.worker.child.main``.

    Returns ``(process, connection)``: the parent's end of a duplex pipe.
    """
    from labpipe.worker import child
    ctx = context()
    parent_end, child_end = ctx.Pipe(duplex=True)
    process = ctx.Process(target=child.main, args=(child_end,), daemon=True)
    process.start()
    child_end.close()
    return process, parent_end


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
                item = start_worker()
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
