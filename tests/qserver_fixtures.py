"""A labpipe master with its queueserver endpoint, for the tests that drive it with
bluesky-queueserver's own clients (REManagerAPI, qserver)."""

import gc

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


def destroy_zmq_contexts() -> None:
    """End the 0MQ contexts REManagerAPI leaves open (the garbage collector would warn
    of them in whatever test runs then). The tests' process has no other 0MQ context
    open between tests."""
    import zmq
    for obj in gc.get_objects():
        if isinstance(obj, zmq.Context) and not obj.closed:
            obj.destroy(linger=0)
