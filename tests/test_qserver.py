"""bluesky-queueserver's own clients against a real labpipe master (``--qserver``):
the ``qserver`` command line and ``REManagerAPI`` (0MQ), installed from PyPI; the same
runs seen by labpipe's ARTIQ-side ``schedule`` and ``history``."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("bluesky_queueserver")
api = pytest.importorskip("bluesky_queueserver_api.zmq")
from bluesky_queueserver_api import BPlan  # noqa: E402
from bluesky_queueserver_api.comm_base import (  # noqa: E402
    RequestFailedError, RequestTimeoutError)

from qserver_fixtures import start_qserver_master  # noqa: E402
from labpipe.qserver.items import uid_of  # noqa: E402

# REManagerAPI (the peer's client) leaves its own 0MQ contexts to the garbage collector
pytestmark = pytest.mark.filterwarnings("ignore:Unclosed context <zmq:ResourceWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QSERVER = os.path.join(os.path.dirname(sys.executable), "qserver")


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    root = tmp_path_factory.mktemp("qslab")
    shutil.copy(os.path.join(ROOT, "device_db.py"), root)
    os.makedirs(root / "repository")
    shutil.copy(os.path.join(ROOT, "repository", "plans.py"), root / "repository")
    m = start_qserver_master(root)
    yield m
    m.stop()


@pytest.fixture
def rm(master):
    client = api.REManagerAPI(zmq_control_addr=master.control, zmq_info_addr=master.info,
                              timeout_recv=10)
    client.queue_clear()
    client.queue_stop()  # the queue stopped: items stay queued until queue_start
    yield client
    client.close()


def qserver(master, *args):
    result = subprocess.run([QSERVER, "--zmq-control-addr", master.control, *args],
                            capture_output=True, text=True, timeout=60)
    return result


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_cli_status_add_start_history_and_artiq_side(master, rm):
    out = qserver(master, "status")
    assert out.returncode == 0, out.stderr
    assert "'manager_state': 'idle'" in out.stdout
    out = qserver(master, "queue", "add", "plan",
                  '{"name": "count", "args": [["det"]], "kwargs": {"num": 5}}')
    assert out.returncode == 0 and "'success': True" in out.stdout, out.stdout
    queue = rm.queue_get()
    (item,) = queue["items"]
    assert item["name"] == "count" and item["kwargs"] == {"num": 5}
    rid = item["properties"]["labpipe_rid"]
    assert "'name': 'count'" in qserver(master, "queue", "get").stdout
    # the ARTIQ side sees the same run in its schedule
    with master.client("schedule") as schedule:
        entry = schedule.get_status()[rid]
    assert entry["pipeline"] == "main" and entry["expid"]["class_name"] == "count"
    history_uid = rm.status()["plan_history_uid"]
    assert qserver(master, "queue", "start").returncode == 0
    wait(lambda: rm.status()["plan_history_uid"] != history_uid
         and rm.status()["manager_state"] == "idle")
    done = [h for h in rm.history_get()["items"] if h["item_uid"] == item["item_uid"]]
    assert done and done[0]["result"]["exit_status"] == "completed"
    assert item["item_uid"] in qserver(master, "history", "get").stdout
    with master.client("history") as history:
        assert history.get(rid)["status"] == "completed"


def test_api_add_get_remove_and_the_uids(master, rm):
    uid0 = rm.status()["plan_queue_uid"]
    first = rm.item_add(BPlan("count", ["det"], num=3))["item"]
    second = rm.item_add(BPlan("count", ["det"], num=4))["item"]
    assert rm.status()["plan_queue_uid"] != uid0
    assert [i["item_uid"] for i in rm.queue_get()["items"]] == [first["item_uid"],
                                                               second["item_uid"]]
    assert rm.item_get(uid=second["item_uid"])["item"]["kwargs"] == {"num": 4}
    updated = dict(second, kwargs={"num": 7})
    rm.item_update(updated)
    assert rm.item_get(pos="back")["item"]["kwargs"] == {"num": 7}
    removed = rm.item_remove(uid=first["item_uid"])
    assert removed["item"]["item_uid"] == first["item_uid"]
    assert rm.status()["items_in_queue"] == 1
    with pytest.raises(RequestFailedError, match="some items were not added"):
        rm.item_add_batch([BPlan("count", ["det"]), BPlan("no_such_plan")])
    assert rm.status()["items_in_queue"] == 2
    rm.queue_clear()
    assert rm.queue_get()["items"] == []


def test_api_moves_execute_clear_and_stop_pending(master, rm):
    def uids():
        return [i["item_uid"] for i in rm.queue_get()["items"]]

    a, b, c = (rm.item_add(BPlan("count", ["det"], num=n))["item"]["item_uid"]
               for n in (1, 2, 3))
    assert uids() == [a, b, c]
    rm.item_move(uid=c, pos_dest="front")
    assert uids() == [c, a, b]
    rm.item_move(uid=c, after_uid=b)
    assert uids() == [a, b, c]
    rm.item_move_batch(uids=[c, b], before_uid=a)
    assert uids() == [c, b, a]
    rm.item_move(pos="back", pos_dest=0)
    assert uids() == [a, c, b]
    with pytest.raises(RequestFailedError, match="destination is not specified"):
        rm.send_request(method="queue_item_move", params={"uid": a})
    # the same order on the ARTIQ side: queue_position in the schedule notifier
    with master.client("schedule") as schedule:
        entries = schedule.get_status()
    by_position = sorted(entries, key=lambda rid: entries[rid]["queue_position"])
    assert [uid_of(rid) for rid in by_position] == uids()
    # execute: runs at once while the queue stays stopped; not a queue item
    rm.environment_open()
    wait(lambda: rm.status()["worker_environment_exists"])
    done = rm.item_execute(BPlan("count", ["det"], num=2))["item"]
    wait(lambda: done["item_uid"] in [i["item_uid"] for i in rm.history_get()["items"]])
    assert uids() == [a, c, b]
    # stop pending while a plan runs, cancelled, then stopped after it
    rm.queue_clear()
    assert uids() == []
    slow = rm.item_add(BPlan("count", ["det"], num=100, delay=0.05))["item"]["item_uid"]
    rm.item_add(BPlan("count", ["det"], num=1))
    rm.queue_start()
    wait(lambda: rm.status()["running_item_uid"] == slow)
    rm.queue_stop()
    assert rm.status()["queue_stop_pending"] is True
    rm.queue_stop_cancel()
    assert rm.status()["queue_stop_pending"] is False
    rm.queue_stop()
    rm.re_stop()
    wait(lambda: rm.status()["running_item_uid"] is None)
    status = rm.status()
    assert status["queue_stop_pending"] is False and status["items_in_queue"] == 1
    assert status["queue_autostart_enabled"] is False


def test_api_queue_mode_maps_to_stop_on_failure(master, rm):
    assert rm.status()["plan_queue_mode"] == {"loop": False, "ignore_failures": True}
    rm.queue_mode_set(ignore_failures=False)
    assert rm.status()["plan_queue_mode"] == {"loop": False, "ignore_failures": False}
    from labpipe.protocol import pyon  # labpipe's own pipeline state, on disk
    stored = pyon.load_file(os.path.join(master.lab_dir, "pipelines.pyon"))
    assert stored["main"]["stop_on_failure"] is True
    with pytest.raises(RequestFailedError, match="loop mode is not available"):
        rm.queue_mode_set(loop=True)
    with pytest.raises(RequestFailedError, match="Unsupported plan queue mode"):
        rm.send_request(method="queue_mode_set", params={"mode": {"speed": 2}})
    rm.queue_mode_set(mode="default")  # the RE Manager's default: stop on a failure
    assert rm.status()["plan_queue_mode"]["ignore_failures"] is False
    rm.queue_mode_set(ignore_failures=True)
    assert rm.status()["plan_queue_mode"] == {"loop": False, "ignore_failures": True}


def test_api_adds_at_positions(master, rm):
    def uids():
        return [i["item_uid"] for i in rm.queue_get()["items"]]

    a = rm.item_add(BPlan("count", ["det"], num=1))["item"]["item_uid"]
    b = rm.item_add(BPlan("count", ["det"], num=2), pos="front")["item"]["item_uid"]
    assert uids() == [b, a]
    c = rm.item_add(BPlan("count", ["det"], num=3), after_uid=b)["item"]["item_uid"]
    d = rm.item_add(BPlan("count", ["det"], num=4), before_uid=b)["item"]["item_uid"]
    e = rm.item_add(BPlan("count", ["det"], num=5), pos=1)["item"]["item_uid"]
    assert uids() == [d, e, b, c, a]
    batch = rm.item_add_batch([BPlan("count", ["det"], num=6),
                               BPlan("count", ["det"], num=7)], after_uid=d)["items"]
    assert uids() == [d, *[i["item_uid"] for i in batch], e, b, c, a]
    with pytest.raises(RequestFailedError, match="Ambiguous parameters"):
        rm.item_add(BPlan("count", ["det"]), pos="front", after_uid=a)
    with pytest.raises(RequestFailedError, match="is not in the queue"):
        rm.item_add(BPlan("count", ["det"]), before_uid="no-such-uid")
    # functions are there (test_qserver_functions.py), but this lab names no module
    with pytest.raises(RequestFailedError, match="this lab has no functions module"):
        rm.function_execute({"item_type": "function", "name": "f"})


def test_api_pause_resume_stop_a_running_count(master, rm):
    item = rm.item_add(BPlan("count", ["det"], num=200, delay=0.05))["item"]
    rm.queue_start()
    wait(lambda: rm.status()["running_item_uid"] == item["item_uid"]
         and rm.status()["re_state"] == "running")
    # re_runs: the running plan's bluesky run, as its worker reported it
    (run,) = wait(lambda: rm.re_runs(reload=True)["run_list"])
    assert run["is_open"] is True and run["exit_status"] is None
    assert len(run["uid"]) == 36
    assert rm.re_runs("open", reload=True)["run_list"] == [run]
    assert rm.re_runs("closed", reload=True)["run_list"] == []
    rm.re_pause(option="immediate")
    wait(lambda: rm.status()["manager_state"] == "paused")
    assert rm.status()["re_state"] == "paused"
    rm.re_resume()
    wait(lambda: rm.status()["re_state"] == "running")
    out = qserver(master, "re", "pause", "deferred")
    assert out.returncode == 0, out.stdout
    wait(lambda: rm.status()["manager_state"] == "paused")
    rm.re_stop()
    rm.wait_for_idle(timeout=30)
    (done,) = [h for h in rm.history_get()["items"] if h["item_uid"] == item["item_uid"]]
    assert done["result"]["exit_status"] == "stopped"
    assert rm.re_runs(reload=True)["run_list"] == []  # nothing runs
    with master.client("history") as history:
        assert history.get(item["properties"]["labpipe_rid"])["status"] == "terminated"


def test_lock_refuses_without_the_key(master, rm):
    out = qserver(master, "lock", "queue", "-k", "K1")
    assert out.returncode == 0, out.stdout
    try:
        info = rm.lock_info()["lock_info"]
        assert info["queue"] is True and info["environment"] is False
        assert info["emergency_lock_key_is_set"] is False  # this lab has none
        with master.client("lock") as lock:  # labpipe's own lock
            assert lock.info()["scope"] == ["queue"]
        with pytest.raises(RequestFailedError, match="schedule.submit_plan: refused, the "
                                                     "queue is locked by qserver-cli"):
            rm.item_add(BPlan("count", ["det"]))
        rm.item_add(BPlan("count", ["det"]), lock_key="K1")
        rm.queue_clear(lock_key="K1")
    finally:
        assert qserver(master, "unlock", "-k", "K1").returncode == 0
    assert rm.lock_info()["lock_info"]["queue"] is False


def test_the_masters_lock_holds_for_queueserver_clients_too(master, rm):
    """The labpipe lock (the `lock` target, as labpipe-client lock) refuses the
    endpoint's changes as it refuses any client without the key."""
    with master.client("lock") as lock:
        lock.lock("K2", note="calibrating")
        try:
            with pytest.raises(RequestFailedError, match="calibrating"):
                rm.item_add(BPlan("count", ["det"]))
            assert rm.status()["items_in_queue"] == 0
        finally:
            lock.unlock("K2")
    rm.item_add(BPlan("count", ["det"]))
    assert rm.status()["items_in_queue"] == 1
    rm.queue_clear()


def test_the_plans_and_devices_uids_change_with_a_rescan(master, rm):
    """A client reloads the lists when their uids change (REManagerAPI's status):
    a rescan that changes the experiment list renews the plans' uid."""
    before = rm.status(reload=True)
    assert rm.plans_allowed()["plans_allowed_uid"] == before["plans_allowed_uid"]
    path = os.path.join(master.lab_dir, "repository", "uid_probe.py")
    with open(path, "w") as f:
        f.write("from labpipe.experiment import *\n\nclass UidProbe(EnvExperiment):\n"
                "    def run(self):\n        pass\n")
    try:
        with master.client("experiment_db") as experiment_db:
            experiment_db.scan_repository()
        wait(lambda: rm.status(reload=True)["plans_allowed_uid"]
             != before["plans_allowed_uid"])
        after = rm.status(reload=True)
        assert after["plans_existing_uid"] == after["plans_allowed_uid"] \
            == rm.plans_existing()["plans_existing_uid"]
        assert after["devices_allowed_uid"] == before["devices_allowed_uid"]
    finally:
        os.remove(path)


def test_bad_input_is_refused_in_one_line_and_the_master_lives(master, rm):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(master.control)
    try:
        for request, words in ((b"not json", "Failed to decode"),
                               (b'{"method": "no_such"}', "Unknown method"),
                               (b'{"method": "queue_get", "params": {"x": 1}}',
                                "unsupported parameters"),
                               (b'[1, 2]', "Dictionary is expected"),
                               (b'{"method": "queue_item_add", "params": {"item": 5, '
                                b'"user": "u", "user_group": "primary"}}', "dictionary"),
                               (b'{"method": "lock", "params": {"lock_key": 5, '
                                b'"queue": true, "user": "u"}}',
                                "Lock key must be a non-empty string"),
                               (b'{"method": "queue_item_add", "params": {"item": {"name":'
                                b' "count"}, "user": 7, "user_group": "primary"}}',
                                "User name must be a non-empty string"),
                               (b'{"method": "re_runs", "params": {"option": "all"}}',
                                "'active', 'open' or 'closed'"),
                               (b'{"method": "unlock", "params": {}}',
                                "Lock key must be a non-empty string")):
            sock.send(request)
            reply = json.loads(sock.recv())
            assert reply["success"] is False and words in reply["msg"], reply
            assert "\n" not in reply["msg"]
    finally:
        sock.close()
        ctx.term()
    with pytest.raises(RequestFailedError, match="no plan 'nope'"):
        rm.item_add(BPlan("nope"))
    rm.permissions_reload()  # no labpipe.toml, permissions off: nothing to change
    assert rm.lock_info()["lock_info"]["queue"] is False
    assert rm.status()["manager_state"] == "idle"


def test_console_monitor_shows_the_master_log(master, rm):
    rm.console_monitor.enable()
    try:
        item = rm.item_add(BPlan("count", ["det"]))["item"]
        rm.queue_start()
        assert item["name"] == "count"
        rm.wait_for_idle(timeout=30)
        text = ""
        deadline = time.monotonic() + 10
        while "pipeline main released" not in text and time.monotonic() < deadline:
            try:
                text += rm.console_monitor.next_msg(timeout=1)["msg"]
            except RequestTimeoutError:
                pass
        assert "pipeline main released" in text
    finally:
        rm.console_monitor.disable()


def _qserver_lab(root, toml):
    shutil.copy(os.path.join(ROOT, "device_db.py"), root)
    os.makedirs(root / "repository", exist_ok=True)
    shutil.copy(os.path.join(ROOT, "repository", "plans.py"), root / "repository")
    (root / "labpipe.toml").write_text(toml)


_start = start_qserver_master


def test_the_lock_is_the_masters_own_and_survives_a_restart(tmp_path):
    """qserver's lock is labpipe's lock (lock.pyon): both sides see it, it holds for
    both, a restart keeps it, lock_key goes to labpipe's gate, and the lab's emergency
    key opens it."""
    _qserver_lab(tmp_path, '[lock]\nemergency_key = "EMERGENCY"\n')
    m = _start(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, timeout_recv=10)
    try:
        # what the endpoint keeps beside labpipe's own records: the history_clear
        # mark, the end asked (re_stop), and each item's user and group
        rm.item_add(BPlan("count", ["det"]))
        rm.queue_start()
        rm.wait_for_idle(timeout=30)
        rm.history_clear()
        assert rm.status()["items_in_history"] == 0 and rm.history_get()["items"] == []
        rm.queue_stop()
        rm.user = "bob"
        stopped = rm.item_add(BPlan("count", ["det"], num=200, delay=0.05))["item"]
        rm.queue_start()
        wait(lambda: rm.status()["running_item_uid"] == stopped["item_uid"])
        rm.queue_stop()
        rm.re_stop()
        rm.wait_for_idle(timeout=30)
        rm.user, rm.user_group = "carol", "admin"
        queued = rm.item_add(BPlan("count", ["det"], num=2))["item"]
        rm.lock("K1", environment=True, queue=True, note="calibrating the laser")
        with m.client("lock") as lock:
            assert lock.info()["scope"] == ["queue", "environment"]
            assert lock.info()["note"] == "calibrating the laser"
    finally:
        rm.close()
        m.stop()
    m = _start(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, timeout_recv=10)
    try:
        (done,) = rm.history_get()["items"]
        assert done["item_uid"] == stopped["item_uid"] and done["user"] == "bob"
        assert done["result"]["exit_status"] == "stopped"
        assert rm.status()["items_in_history"] == 1
        (item,) = rm.queue_get()["items"]
        assert (item["item_uid"], item["user"], item["user_group"], item["name"]) == (
            queued["item_uid"], "carol", "admin", "count")
        assert item["kwargs"]["num"] == 2
        info = rm.lock_info()["lock_info"]
        assert (info["environment"], info["queue"], info["note"], info["user"]) == (
            True, True, "calibrating the laser", "carol")
        assert info["emergency_lock_key_is_set"] is True
        assert rm.status()["lock"] == {"environment": True, "queue": True}
        for call in (lambda: rm.item_add(BPlan("count", ["det"]), lock_key="wrong"),
                     lambda: rm.item_add(BPlan("count", ["det"])),
                     lambda: rm.environment_close(), lambda: rm.queue_stop(),
                     lambda: rm.lock_info(lock_key="wrong"),
                     lambda: rm.lock("K9", environment=True, note="mine")):
            with pytest.raises(RequestFailedError, match="lock"):
                call()
        assert rm.status()["items_in_queue"] == 1
        rm.queue_stop(lock_key="K1")
        rm.item_add(BPlan("count", ["det"]), lock_key="K1")
        assert rm.status()["items_in_queue"] == 2
        # labpipe's own clients are refused too
        with m.client("schedule") as schedule:
            with pytest.raises(Exception, match="calibrating the laser"):
                schedule.submit_plan("main", "count", [["det"]])
        rm.unlock("EMERGENCY")  # the lab's emergency key
        with m.client("lock") as lock:
            assert lock.info()["locked"] is False
            # a lock taken by labpipe-client: a qserver request passes it with its key
            lock.lock("K3", ["queue"], "labpipe side")
        with pytest.raises(RequestFailedError, match="labpipe side"):
            rm.item_remove(pos="back")
        rm.item_remove(pos="back", lock_key="K3")
        rm.environment_update()  # the environment is not locked
        with pytest.raises(RequestFailedError, match="schedule.hold: refused"):
            rm.environment_close()  # but it holds the queue, which is
        rm.unlock("K3")
        assert rm.lock_info()["lock_info"]["queue"] is False
        # the environment alone: what the RE Manager counts as the environment's is
        # refused though labpipe maps it onto a queue method; the queue stays open
        rm.lock("K4", environment=True, note="alignment")
        with pytest.raises(RequestFailedError, match="queue_start: refused, the "
                                                     "environment is locked"):
            rm.queue_start()
        rm.item_add(BPlan("count", ["det"]))
        rm.unlock("K4")
    finally:
        rm.close()
        m.stop()


_PERMISSIONS = """
[permissions]
enabled = true
default_group = "primary"
[permissions.groups.primary]
edit_queue = true
forbidden_plans = ["{forbidden}"]
forbidden_devices = ["shutter"]
[permissions.groups.observers]
"""


def test_user_groups_are_labpipes_groups(tmp_path):
    """user_group is labpipe's group: its plans and devices, its rules refusing a
    plan (with the rule's message), its rights; permissions_get shows labpipe's groups,
    permissions_reload reads labpipe.toml again, permissions_set is refused."""
    _qserver_lab(tmp_path, _PERMISSIONS.format(forbidden="scan"))
    m = _start(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, timeout_recv=10)
    try:
        rm.queue_stop()
        assert set(rm.plans_existing()["plans_existing"]) >= {"count", "scan"}
        allowed = rm.plans_allowed()["plans_allowed"]
        assert "count" in allowed and "scan" not in allowed
        devices = rm.devices_allowed()["devices_allowed"]
        assert "det" in devices and "shutter" not in devices
        with pytest.raises(RequestFailedError, match="Unknown user group: 'nobody'"):
            rm.send_request(method="plans_allowed", params={"user_group": "nobody"})
        with pytest.raises(RequestFailedError,
                           match="plan 'scan' matches forbidden_plans 'scan' of "
                                 r"\[permissions.groups.primary\]"):
            rm.item_add(BPlan("scan", ["det"], "motor", -1, 1, 3))
        with pytest.raises(RequestFailedError, match="forbidden_devices 'shutter'"):
            rm.item_add(BPlan("count", ["shutter"]))
        with pytest.raises(RequestFailedError, match="some items were not added") as e:
            rm.item_add_batch([BPlan("count", ["det"]),
                               BPlan("scan", ["det"], "motor", -1, 1, 3)])
        assert [r["success"] for r in e.value.response["results"]] == [True, False]
        assert "forbidden_plans 'scan'" in e.value.response["results"][1]["msg"]
        rm.queue_clear()
        out = qserver(m, "queue", "add", "plan",
                      '{"name": "scan", "args": [["det"], "motor", -1, 1, 3]}')
        assert "'success': False" in out.stdout and "forbidden_plans" in out.stdout
        rm.user, rm.user_group = "alice", "primary"
        item = rm.item_add(BPlan("count", ["det"]))["item"]
        assert (item["user"], item["user_group"]) == ("alice", "primary")
        with m.client("schedule") as schedule:
            run = schedule.get_status()[item["properties"]["labpipe_rid"]]
        assert run["expid"]["class_name"] == "count"
        rm.user_group = "observers"
        # a group that may not edit the queue may put no plan, no device in it
        assert rm.plans_allowed()["plans_allowed"] == {}
        assert rm.devices_allowed()["devices_allowed"] == {}
        with pytest.raises(RequestFailedError, match="group observers.*may not edit "
                                                     "the queue"):
            rm.item_add(BPlan("count", ["det"]))
        groups = rm.permissions_get()["user_group_permissions"]["user_groups"]
        assert set(groups) == {"primary", "observers"}
        assert groups["primary"]["forbidden_plans"] == ["scan"]
        assert groups["primary"]["allowed_plans"] == [None]
        with pytest.raises(RequestFailedError, match="labpipe.toml"):
            rm.permissions_set(groups)
        # labpipe.toml edited: permissions_reload takes it
        (tmp_path / "labpipe.toml").write_text(_PERMISSIONS.format(forbidden="count"))
        uid = rm.status()["plans_allowed_uid"]
        rm.permissions_reload()
        assert rm.status()["plans_allowed_uid"] != uid
        rm.user_group = "primary"
        assert "count" not in rm.plans_allowed()["plans_allowed"]
        with pytest.raises(RequestFailedError, match="forbidden_plans 'count'"):
            rm.item_add(BPlan("count", ["det"]))
        (tmp_path / "labpipe.toml").write_text("[permissions]\ndefault_group = 5\n")
        with pytest.raises(RequestFailedError, match="default_group"):
            rm.permissions_reload()
        assert "scan" in rm.plans_allowed()["plans_allowed"]  # as they were
    finally:
        rm.close()
        m.stop()
