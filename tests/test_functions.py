"""Functions of the lab's functions module, called in workers (``docs/functions.md``):
a real master, real workers, over RPC, with ``labpipe-client call``; the queueserver
side (``REManagerAPI.function_execute``) is in ``test_qserver.py``."""

import asyncio
import os
import time

import h5py
import pytest

from conftest import GATED, Lab, MasterProcess, expid, running_master, wait_until

from labpipe.config import config_from_dict
from labpipe.master.functions import defined_names
from labpipe.master.task_store import TaskStore
from labpipe.protocol.rpc import AsyncClient

FUNCTIONS = """
import os, time

def add(a, b=0):
    return a + b

def fail(x):
    raise ValueError(f"bad value {x}")

def read_dmm(env, key="dmm"):
    return env.get_device(key).read()

def remember(env, value):
    env.set_dataset("remembered", value, broadcast=True, persist=True)
    return env.get_dataset("remembered")

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.005)
    return "opened"

def not_pyon():
    return object()

_private = add
"""

DMM = """
class DMM:
    def __init__(self, dmgr, volts=1.25):
        self.volts = volts

    def read(self):
        return self.volts
"""

DEVICE_DB = """
device_db = {
    "dmm": {"type": "local", "module": "fakedmm", "class": "DMM",
            "arguments": {"volts": 1.25}},
}
"""


def _functions_lab(lab):
    lab.write("labpipe.toml", 'functions = "lab_functions"\n')
    lab.write("lab_functions.py", FUNCTIONS)
    lab.write("fakedmm.py", DMM)
    lab.write("device_db.py", DEVICE_DB)
    return lab.experiment("gated", GATED)


async def _rpc(master, target="schedule"):
    client = AsyncClient()
    await client.connect_rpc("127.0.0.1", master.port("control"), target)
    return client


async def _result(schedule, task, timeout=20.0):
    """The record of task once it completed (polled over RPC)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await schedule.task_status(task)) != "completed":
        assert status in ("queued", "running"), status
        assert asyncio.get_running_loop().time() < deadline, f"task still {status}"
        await asyncio.sleep(0.01)
    return await schedule.task_result(task)


def cli(*argv):
    """Run labpipe-client in this process; its exit code."""
    from labpipe.client.main import main as client_main
    try:
        client_main(list(argv))
    except SystemExit as e:
        return e.code or 0
    return 0


async def test_calls_return_values_errors_and_devices_over_rpc(lab):
    _functions_lab(lab)
    async with running_master(lab) as m:
        schedule = await _rpc(m)
        try:
            ended = []
            m.scheduler.on_run_end.append(lambda run, end: ended.append((run.rid, end)))
            task = await schedule.call_function("main", "add", [2], {"b": 3})
            result = await _result(schedule, task)
            assert result["success"] is True and result["return_value"] == 5
            assert result["msg"] == "" and result["background"] is False
            assert result["task"] == task and result["name"] == "add"
            # a queue item: it had a RID, and its run is in history, completed
            rid = result["rid"]
            assert isinstance(rid, int)
            record = await m.history.get(rid)
            assert record["status"] == "completed"
            assert record["expid"]["class_name"] == "add"
            assert record["expid"]["function"]["task"] == task
            with h5py.File(lab.path(record["results"]), "r") as f:  # and in its results file
                assert f["datasets/function_return"][()].decode() == "5"

            task = await schedule.call_function("main", "fail", [3])
            result = await _result(schedule, task)
            assert result["success"] is False and result["return_value"] is None
            assert result["msg"] == "lab_functions.fail raised ValueError: bad value 3"
            assert "raise ValueError" in result["traceback"]
            assert (await m.history.get(result["rid"]))["status"] == "failed"

            # the lab's devices, and its datasets
            task = await schedule.call_function("main", "read_dmm")
            assert (await _result(schedule, task))["return_value"] == 1.25
            task = await schedule.call_function("main", "remember", [[1, 2]])
            assert (await _result(schedule, task))["return_value"] == [1, 2]
            assert m.dataset_db.data.raw_view["remembered"][1] == [1, 2]

            # wrong arguments, a value that is not PYON: one line each
            task = await schedule.call_function("main", "add", [1, 2, 3])
            result = await _result(schedule, task)
            assert result["success"] is False
            assert result["msg"].startswith("lab_functions.add: wrong arguments: ")
            task = await schedule.call_function("main", "not_pyon")
            msg = (await _result(schedule, task))["msg"]
            assert msg.startswith("lab_functions.not_pyon returned a value that is not "
                                  "PYON (object)"), msg

            # refused at once, no RID taken: an unknown or private name
            last = m.scheduler.rid_counter.last
            for name, words in (("nope", "has no function 'nope' (it defines: add, "),
                                ("_private", "is not the name of a public function")):
                with pytest.raises(Exception) as info:
                    await schedule.call_function("main", name)
                assert words in str(info.value).splitlines()[0], str(info.value)
            assert m.scheduler.rid_counter.last == last
            assert await schedule.task_status("0" * 8 + "-0000-4000-8000-" + "0" * 12) \
                == "not_found"
            assert (await schedule.task_result("nonsense"))["status"] == "not_found"
        finally:
            schedule.close_rpc()


async def test_background_call_runs_beside_the_pipelines_run(lab):
    gated = _functions_lab(lab)
    gate = lab.path("gate")
    async with running_master(lab) as m:
        schedule = await _rpc(m)
        try:
            rid = await schedule.submit("main", expid(gated, gate=gate, tag="a"))
            await wait_until(lambda: m.scheduler.find(rid).status.value == "running")
            # a foreground call waits in the queue behind the running run...
            queued = await schedule.call_function("main", "add", [1], {"b": 1})
            # ...a background one starts at once, in its own worker
            task = await schedule.call_function("main", "add", [20], {"b": 22},
                                                True)
            result = await _result(schedule, task)
            assert result["return_value"] == 42 and result["background"] is True
            assert result["rid"] is None
            assert m.scheduler.find(rid).status.value == "running"
            assert await schedule.task_status(queued) == "queued"
            assert (await schedule.task_result(queued))["return_value"] is None
            # a queue item like any other: it has a queue position, it can be moved
            queued_rid = (await schedule.task_result(queued))["rid"]
            later = await schedule.submit("main", expid(gated, tag="b"))
            await schedule.move(later, pos="front")
            order = sorted((e["queue_position"], r) for r, e in
                           m.scheduler.get_status().items() if r != rid)
            assert [r for _, r in order] == [later, queued_rid]
            # deleting a queued call's run ends the call
            dropped = await schedule.call_function("main", "add", [1])
            await schedule.delete((await schedule.task_result(dropped))["rid"])
            result = await _result(schedule, dropped)
            assert result["success"] is False
            assert result["msg"] == "add: the call was deleted"
            with open(gate, "w"):
                pass
            result = await _result(schedule, queued)
            assert result["return_value"] == 2 and result["rid"] > rid
        finally:
            schedule.close_rpc()


async def test_a_running_task_shows_as_running(lab):
    _functions_lab(lab)
    gate = lab.path("fgate")
    async with running_master(lab) as m:
        schedule = await _rpc(m)
        try:
            fg = await schedule.call_function("main", "wait_for", [gate])
            bg = await schedule.call_function("other", "wait_for", [gate], None, True)
            await wait_until(lambda: m.scheduler.pipelines.get("main") is not None and any(
                r.status.value == "running" for r in m.scheduler.pipelines["main"].runs
                .values()))
            assert await schedule.task_status(fg) == "running"
            assert (await schedule.task_result(fg))["time_start"] > 0
            assert await schedule.task_status(bg) == "running"
            assert (await schedule.task_result(bg))["success"] is None
            m.functions.max_background = 1
            with pytest.raises(Exception, match="1 background functions run already"):
                await schedule.call_function("other", "add", [1], None, True)
            with open(gate, "w"):
                pass
            assert (await _result(schedule, fg))["return_value"] == "opened"
            assert (await _result(schedule, bg))["return_value"] == "opened"
        finally:
            schedule.close_rpc()


async def test_refusals_without_a_module_and_a_module_that_cannot_import(lab, tmp_path):
    _functions_lab(lab)
    async with running_master(lab, config=config_from_dict({})) as m:
        schedule = await _rpc(m)
        try:
            with pytest.raises(Exception, match="this lab has no functions module"):
                await schedule.call_function("main", "add")
        finally:
            schedule.close_rpc()
    lab.write("broken.py", "import no_such_module_here\n\ndef f():\n    return 1\n")
    lab.write("syntax.py", "def f(:\n")
    config = config_from_dict({"functions": {"module": "broken"}})
    async with running_master(lab, config=config) as m:
        schedule = await _rpc(m)
        try:
            task = await schedule.call_function("main", "f")
            result = await _result(schedule, task)
            assert result["success"] is False
            assert result["msg"] == ("cannot import the functions module 'broken': "
                                     "ModuleNotFoundError: No module named "
                                     "'no_such_module_here'")
            assert (await m.history.get(result["rid"]))["status"] == "failed"
            # a module in the repository (the lab directory has none of that name)
            lab.write("repository/repo_functions.py", "def where():\n"
                      "    import os\n    return os.path.basename(__file__)\n")
            m.functions.module = "repo_functions"
            task = await schedule.call_function("main", "where")
            assert (await _result(schedule, task))["return_value"] == "repo_functions.py"
            m.functions.module = "syntax"
            with pytest.raises(Exception, match="cannot import the functions module "
                               "'syntax': SyntaxError"):
                await schedule.call_function("main", "f")
            m.functions.module = "missing_module"
            with pytest.raises(Exception, match="'missing_module' is not in the lab "
                               "directory"):
                await schedule.call_function("main", "f")
        finally:
            schedule.close_rpc()


async def test_a_bad_module_name_stops_the_master_at_start(lab):
    from labpipe.config import ConfigError
    with pytest.raises(ConfigError, match="'not a module' is not a module name"):
        async with running_master(lab, config=config_from_dict(
                {"functions": "not a module"})):
            pass


async def test_a_locked_master_refuses_calls_without_the_key(lab):
    _functions_lab(lab)
    async with running_master(lab) as m:
        schedule, lock = await _rpc(m), await _rpc(m, "lock")
        try:
            await lock.lock("sesame", ["environment"], "aligning the laser", "ana")
            with pytest.raises(Exception) as info:
                await schedule.call_function("main", "add", [1])
            line = str(info.value).splitlines()[0]
            assert "locked" in line and "ana" in line and "aligning the laser" in line
            assert m.scheduler.get_status() == {}
            task = await schedule.call_function("main", "add", [1], lock_key="sesame")
            assert (await _result(schedule, task))["return_value"] == 1
            # reading needs no key
            assert await schedule.task_status(task) == "completed"
            await lock.unlock("sesame")
            # with the queue locked, a foreground call (a queue item) is refused, a
            # background one (not in the queue) goes
            await lock.lock("sesame", ["queue"], "overnight scan", "bo")
            with pytest.raises(Exception) as info:
                await schedule.call_function("main", "add", [1])
            line = str(info.value).splitlines()[0]
            assert line.startswith("schedule.call_function: refused, the queue is locked")
            assert "overnight scan" in line
            task = await schedule.call_function("main", "add", [2], None, True)
            assert (await _result(schedule, task))["return_value"] == 2
            task = await schedule.call_function("main", "add", [3], lock_key="sesame")
            assert (await _result(schedule, task))["return_value"] == 3
        finally:
            schedule.close_rpc()
            lock.close_rpc()


async def test_results_and_queued_calls_survive_a_restart(lab):
    _functions_lab(lab)
    async with running_master(lab) as m:
        schedule = await _rpc(m)
        try:
            done = await schedule.call_function("main", "add", [4], {"b": 5})
            assert (await _result(schedule, done))["return_value"] == 9
            await schedule.hold("main")
            queued = await schedule.call_function("main", "add", [1], {"b": 2})
        finally:
            schedule.close_rpc()
    assert os.path.isfile(lab.path("function_tasks", done + ".pyon"))
    async with running_master(lab) as m:
        schedule = await _rpc(m)
        try:
            result = await schedule.task_result(done)
            assert result["status"] == "completed" and result["return_value"] == 9
            assert await schedule.task_status(queued) == "queued"
            await schedule.release("main")
            assert (await _result(schedule, queued))["return_value"] == 3
        finally:
            schedule.close_rpc()


async def test_labpipe_client_call(lab, capsys):
    _functions_lab(lab)
    async with running_master(lab) as m:
        port = str(m.port("control"))
        code = await asyncio.to_thread(cli, "--port", port, "call", "add", "2", "b=3")
        assert code == 0 and capsys.readouterr().out == "5\n"
        code = await asyncio.to_thread(cli, "--port", port, "call", "--background",
                                       "add", "[1]", "b=[2]")
        assert code == 0 and capsys.readouterr().out == "[1,2]\n"
        code = await asyncio.to_thread(cli, "--port", port, "call", "fail", "x")
        captured = capsys.readouterr()
        assert code == 1 and captured.out == ""
        assert captured.err == ("labpipe-client: lab_functions.fail raised ValueError: "
                                "bad value x\n")
        code = await asyncio.to_thread(cli, "--port", port, "call", "nope")
        err = capsys.readouterr().err
        assert code == 3 and err.startswith("labpipe-client: refused: ") and \
            "has no function 'nope'" in err and len(err.splitlines()) == 1


def test_defined_names_and_the_bounded_store(tmp_path):
    assert defined_names("import os.path as p, sys\nfrom x import y as z\n"
                         "def f(): pass\nasync def g(): pass\nif True:\n    h = 1\n"
                         "try:\n    k = 2\nexcept Exception:\n    m = 3\n") == {
        "p", "sys", "z", "f", "g", "h", "k", "m"}
    assert defined_names("from x import *\n") is None
    store = TaskStore(str(tmp_path / "tasks"), keep=3)
    assert store.load() == 0
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(5)]
    for i, task in enumerate(ids):
        store.write({"task": task, "status": "completed", "return_value": i})
    assert len(store) == 3 and sorted(os.listdir(tmp_path / "tasks")) == [
        t + ".pyon" for t in ids[2:]]
    assert store.read(ids[0]) is None and store.read(ids[4])["return_value"] == 4
    assert store.read("../../etc/passwd") is None
    # a record left running by a master that stopped ends as failed at the next load
    store.write({"task": ids[4], "status": "running"})
    again = TaskStore(str(tmp_path / "tasks"), keep=3)
    assert again.load() == 3
    assert again.read(ids[4]) == {"task": ids[4], "status": "completed",
                                  "success": False,
                                  "msg": "the master stopped while the function ran"}


def test_a_reported_result_survives_a_kill(tmp_path):
    """labpipe-master and labpipe-client as processes; SIGKILL after the result was
    reported: the restarted master reports it the same."""
    lab = Lab(tmp_path)
    _functions_lab(lab)
    first = MasterProcess(lab.root)
    try:
        assert first.cli("call", "add", "20", "b=22").stdout == "42\n"
        task = first.cli("call", "--no-wait", "add", "[1]", "b=[2]").stdout.strip()
        schedule = first.client("schedule")
        try:
            deadline = time.monotonic() + 20
            while schedule.task_status(task) != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            result = schedule.task_result(task)
        finally:
            schedule.close_rpc()
        assert result["return_value"] == [1, 2]
    finally:
        first.process.kill()
        first.process.wait()
    second = MasterProcess(lab.root)
    try:
        schedule = second.client("schedule")
        try:
            assert schedule.task_result(task) == result
        finally:
            schedule.close_rpc()
        failed = second.cli("call", "fail", "2", check=False)
        assert failed.returncode == 1 and failed.stdout == ""
        assert failed.stderr == ("labpipe-client: lab_functions.fail raised ValueError: "
                                 "bad value 2\n")
    finally:
        second.stop()
