"""A labpipe master with its queueserver endpoint, for the tests that drive it with
bluesky-queueserver's own clients (REManagerAPI, qserver)."""

import contextlib
import weakref

from conftest import MasterProcess


def start_qserver_master(root) -> MasterProcess:
    """labpipe-master --qserver in the lab root, every address picked free; its
    ``control`` and ``info`` are the endpoint's 0MQ addresses."""
    m = MasterProcess(str(root), "--qserver", "--qserver-control-addr",
                      "tcp://127.0.0.1:*", "--qserver-info-addr", "tcp://127.0.0.1:*")
    m.lab_dir = str(root)
    m.control = f"tcp://127.0.0.1:{m.ports['qserver-control']}"
    m.info = f"tcp://127.0.0.1:{m.ports['qserver-info']}"
    return m


@contextlib.contextmanager
def zmq_contexts_ended():
    """End, on leaving, the 0MQ contexts made meanwhile that are still open.
    REManagerAPI leaves its contexts to the garbage collector, which would warn of
    them in whatever test of this process runs then (the queueserver modules ignore
    that warning; a later test of another module would not). Contexts are not
    tracked by the garbage collector, so they are noted as they are made."""
    import zmq
    made: weakref.WeakSet = weakref.WeakSet()
    original = zmq.Context.__init__

    def noting(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.add(self)
    zmq.Context.__init__ = noting
    try:
        yield
    finally:
        zmq.Context.__init__ = original
        for context in list(made):
            if not context.closed:
                context.destroy(linger=0)
