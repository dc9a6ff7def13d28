"""bluesky-queueserver-api's ``REManagerAPI`` calls the lab's functions through a real
labpipe master (``--qserver``): ``function_execute``, ``task_status``,
``task_result``, ``wait_for_completed_task``, in the shapes of the real RE Manager."""

import os
import time

import pytest

zmq = pytest.importorskip("zmq")
api = pytest.importorskip("bluesky_queueserver_api.zmq")
from bluesky_queueserver_api import BFunc  # noqa: E402
from bluesky_queueserver_api.comm_base import RequestFailedError  # noqa: E402

from conftest import write_file  # noqa: E402
from qserver_fixtures import start_qserver_master  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unclosed context <zmq:ResourceWarning")

FUNCTIONS = """
import os, time
import numpy

def add(a, b=0):
    return a + b

def fail(x):
    raise ValueError(f"bad value {x}")

def ramp(n):
    return {"points": numpy.arange(n), "pair": (1, 2)}

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.005)
    return "opened"
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsfunctions")
    write_file(root, "device_db.py", "device_db = {}\n")
    write_file(root, "labpipe.toml", 'functions = "lab_functions"\n')
    write_file(root, "lab_functions.py", FUNCTIONS)
    os.makedirs(root / "repository")
    m = start_qserver_master(root)
    yield m
    m.stop()


@pytest.fixture
def rm(master):
    client = api.REManagerAPI(zmq_control_addr=master.control, zmq_info_addr=master.info,
                              timeout_recv=10)
    yield client
    client.close()


def _completed(rm, uid):
    assert rm.wait_for_completed_task(uid, timeout=30) == {uid: "completed"}
    reply = rm.task_result(uid)
    assert reply["success"] is True and reply["status"] == "completed"
    assert reply["task_uid"] == uid
    return reply["result"]


def test_function_execute_and_its_result(master, rm):
    uids_before = rm.status()["task_results_uid"]
    reply = rm.function_execute(BFunc("add", 2, b=3))
    assert reply["success"] is True and reply["msg"] == ""
    assert reply["item"]["name"] == "add" and reply["item"]["item_type"] == "function"
    uid = reply["task_uid"]
    result = _completed(rm, uid)
    assert set(result) == {"task_uid", "success", "msg", "traceback", "return_value",
                           "time_start", "time_stop"}
    assert result["success"] is True and result["return_value"] == 5
    assert result["msg"] == "" and result["time_start"] <= result["time_stop"]
    assert rm.status()["task_results_uid"] != uids_before
    # a foreground call went through the queue: it is in history, as labpipe sees it
    history = master.client("history")
    try:
        rid = history.list(5)[0]["rid"]
        assert history.get(rid)["expid"]["function"]["task"] == uid
    finally:
        history.close_rpc()

    result = _completed(rm, rm.function_execute(BFunc("fail", 1))["task_uid"])
    assert result["success"] is False and result["return_value"] is None
    assert result["msg"] == "lab_functions.fail raised ValueError: bad value 1"
    assert "ValueError" in result["traceback"]

    result = _completed(rm, rm.function_execute(BFunc("ramp", 3))["task_uid"])
    assert result["return_value"] == {"points": [0, 1, 2], "pair": [1, 2]}


def test_background_task_status_and_refusals(master, rm):
    gate = os.path.join(master.lab_dir, "gate")
    uid = rm.function_execute(BFunc("wait_for", gate), run_in_background=True)["task_uid"]
    reply = rm.task_status(uid)
    assert reply == {"success": True, "msg": "", "task_uid": uid, "status": "running"}
    reply = rm.task_result(uid)
    assert reply["status"] == "running"
    assert reply["result"]["task_uid"] == uid
    assert reply["result"]["run_in_background"] is True
    assert rm.status()["worker_background_tasks"] == 1
    missing = "00000000-0000-4000-8000-000000000000"
    reply = rm.task_status([uid, missing])
    assert reply["status"] == {uid: "running", missing: "not_found"}
    assert rm.task_result(missing)["status"] == "not_found"
    assert rm.task_result(missing)["result"] == {}
    with open(gate, "w"):
        pass
    assert _completed(rm, uid)["return_value"] == "opened"
    deadline = time.monotonic() + 10
    while rm.status(reload=True)["worker_background_tasks"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    with pytest.raises(RequestFailedError, match="has no function 'nope'"):
        rm.function_execute(BFunc("nope"))
    with pytest.raises(RequestFailedError, match="function item"):
        rm.send_request(method="function_execute",
                        params={"item": {"item_type": "plan", "name": "add"}})


def test_a_locked_master_refuses_function_execute(master, rm):
    lock = master.client("lock")
    try:
        lock.lock("sesame", ["environment"], "calibrating", "ana")
        try:
            with pytest.raises(RequestFailedError) as info:
                rm.function_execute(BFunc("add", 1))
            msg = info.value.response["msg"]
            assert msg.startswith("schedule.call_function: refused") and "ana" in msg \
                and "calibrating" in msg, msg
        finally:
            lock.unlock("sesame")
        assert _completed(rm, rm.function_execute(BFunc("add", 1))["task_uid"])[
            "return_value"] == 1
    finally:
        lock.close_rpc()
