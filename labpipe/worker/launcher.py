"""Starting worker processes from a warm template.

Each run gets a fresh process for isolation, but not a cold interpreter: processes are
forked from multiprocessing's forkserver, which has already imported the heavy modules
(numpy, h5py, bluesky, ophyd and labpipe's worker code). Starting a worker then costs a
fork and a few milliseconds instead of hundreds of them.

The forkserver is started by ``warm_up()`` (the master calls it at start so that the
first run is fast too) or on the first ``start_worker``.
"""

import importlib.util
import multiprocessing

__all__ = ["PRELOAD", "context", "start_worker", "warm_up"]

#: Modules imported once in the template. Optional ones are skipped when absent.
PRELOAD = ["labpipe.worker.child", "numpy", "h5py", "ophyd", "bluesky", "bluesky.plans",
           "ophyd.sim"]

_context = None


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with the preload list set on first use."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
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
    """Start the forkserver now (it imports the preload list once) and wait for it."""
    process = context().Process(target=_noop, daemon=True)
    process.start()
    process.join()


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
