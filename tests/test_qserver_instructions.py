"""bluesky-queueserver's instructions (``queue_stop`` items) in a labpipe queue, driven
by the peer's own clients (``REManagerAPI`` with ``BInst``, the ``qserver`` command
line) against a real master: the queue stops at the instruction, the rest waits for
queue_start, a restart keeps the instruction in its place, and the ARTIQ side sees it
as a schedule entry."""

import time

import pytest

zmq = pytest.importorskip("zmq")
api = pytest.importorskip("bluesky_queueserver_api.zmq")
from bluesky_queueserver_api import BInst, BPlan  # noqa: E402
from bluesky_queueserver_api.comm_base import RequestFailedError  # noqa: E402

from test_qserver import _qserver_lab, _start, qserver, wait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unclosed context <zmq:ResourceWarning")


def _queue(rm):
    return [(i["item_type"], i["item_uid"]) for i in rm.queue_get()["items"]]


def _history_uids(rm):
    return [h["item_uid"] for h in rm.history_get()["items"]]


def _stopped_with(rm, size):
    """The queue went idle and held, with size items left."""
    status = rm.status()
    return (status["manager_state"] == "idle" and status["items_in_queue"] == size
            and status["queue_autostart_enabled"] is False)


def test_queue_stop_instructions_stop_the_queue_and_survive_a_restart(tmp_path):
    _qserver_lab(tmp_path, "")
    m = _start(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, timeout_recv=10)
    try:
        rm.queue_stop()  # held: nothing starts until queue_start
        a = rm.item_add(BPlan("count", ["det"], num=1))["item"]["item_uid"]
        out = qserver(m, "queue", "add", "instruction", "queue-stop")
        assert out.returncode == 0 and "'success': True" in out.stdout, out.stdout
        b = rm.item_add(BPlan("count", ["det"], num=1))["item"]["item_uid"]
        added = rm.item_add_batch([BInst("queue_stop"), BPlan("count", ["det"], num=2)])
        s2, c = (i["item_uid"] for i in added["items"])
        queue = rm.queue_get()["items"]
        s1 = queue[1]["item_uid"]
        assert _queue(rm) == [("plan", a), ("instruction", s1), ("plan", b),
                              ("instruction", s2), ("plan", c)]
        assert queue[1]["name"] == "queue_stop" and rm.status()["items_in_queue"] == 5
        assert "queue_stop" in qserver(m, "queue", "get").stdout
        # the ARTIQ side: the instruction is an entry of the schedule
        rid1 = queue[1]["properties"]["labpipe_rid"]
        with m.client("schedule") as schedule:
            entry = schedule.get_status()[rid1]
        assert entry["expid"]["instruction"] == "queue_stop"
        assert (entry["pipeline"], entry["status"]) == ("main", "pending")
        # an instruction stays an instruction; it only means something in the queue
        with pytest.raises(RequestFailedError, match="instruction stays one"):
            rm.item_update({"item_type": "plan", "name": "count", "args": [["det"]],
                            "item_uid": s1})
        with pytest.raises(RequestFailedError, match="cannot be executed at once"):
            rm.item_execute(BInst("queue_stop"))
        with pytest.raises(RequestFailedError, match="Unrecognized instruction"):
            rm.item_add(BInst("queue_pause"))
        # queue_start runs a, reaches the instruction and stops; b waits
        rm.queue_start()
        wait(lambda: _stopped_with(rm, 3))
        time.sleep(0.3)  # b would have started by now were the queue not stopped
        assert _queue(rm) == [("plan", b), ("instruction", s2), ("plan", c)]
        assert _history_uids(rm) == [a]  # executed instructions are not in its history
        assert rm.status()["items_in_history"] == 1
        with m.client("history") as history:
            assert history.get(rid1)["status"] == "completed"
    finally:
        rm.close()
        m.stop()
    m = _start(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, timeout_recv=10)
    try:
        # the restart keeps the instructions in their places, and the queue stopped
        assert _queue(rm) == [("plan", b), ("instruction", s2), ("plan", c)]
        assert rm.status()["queue_autostart_enabled"] is False
        # moved and removed like any item
        rm.item_move(uid=s2, pos_dest="back")
        assert _queue(rm) == [("plan", b), ("plan", c), ("instruction", s2)]
        s3 = rm.item_add(BInst("queue_stop"), pos="front")["item"]["item_uid"]
        assert _queue(rm)[0] == ("instruction", s3)
        rm.item_remove(uid=s3)
        # queue_start again runs the rest, up to the instruction at the back
        rm.queue_start()
        wait(lambda: _stopped_with(rm, 0))
        assert _history_uids(rm) == [a, b, c]
        assert all(h["result"]["exit_status"] == "completed"
                   for h in rm.history_get()["items"])
    finally:
        rm.close()
        m.stop()
