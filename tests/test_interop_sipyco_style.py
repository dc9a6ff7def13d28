"""A sipyco-style wire client against a real labpipe master, every documented method.

The client side is written only from ``shared/docs/wire-compat.md``, with raw sockets
and its own minimal PYON encoder (nothing from ``labpipe.protocol``): it encodes a call
exactly as sipyco's clients do, positional arguments as a PYON tuple
(``{"__jsonclass__": ["tuple", [[...]]]}``) and keyword arguments as a dict. The
list-args client of ``test_interop.py`` proves nothing about sipyco clients; this one
does. It also checks ARTIQ's delete semantics: ``delete`` and ``request_termination``
of a RID not in the schedule return normally.
"""

import json
import socket
import time

import pytest

from conftest import ASK, SLOW, MasterProcess, wait_for


# --------------------------------------------------------------------------- independent side


def encode(value):
    """PYON v2 for the types this client sends: JSON plus tuple (and int-keyed dict)."""
    return json.dumps(_escape(value), separators=(",", ":"))


def _escape(value):
    if isinstance(value, tuple):
        return {"__jsonclass__": ["tuple", [[_escape(v) for v in value]]]}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _escape(v) for k, v in value.items()}
        return {"__jsonclass__": ["dict", [[[_escape(k), _escape(v)]
                                             for k, v in value.items()]]]}
    return value


def decode(text):
    return json.loads(text, object_hook=_unescape)


def _unescape(obj):
    if "__jsonclass__" not in obj:
        return obj
    typename, args = obj["__jsonclass__"]
    if typename == "tuple":
        return tuple(args[0])
    if typename == "set":
        return set(args[0])
    if typename == "dict":
        return {k: v for k, v in args[0]}
    raise ValueError(f"this client does not decode {typename}")


class RemoteFailure(Exception):
    def __init__(self, exception):
        super().__init__(f"{exception['class']}: {exception['message']}")
        self.cls = exception["class"]
        self.message = exception["message"]


class SipycoStyleClient:
    """pc_rpc as sipyco's Client speaks it: banner, target + pyon_v2, tuple args."""

    def __init__(self, port, target, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.lines = self.sock.makefile("rb")
        self.sock.sendall(b"ARTIQ pc_rpc\n")
        self.identification = decode(self._recv())
        assert "pyon_v2" in self.identification["features"]
        self.sock.sendall(f"{target} pyon_v2\n".encode())
        self.methods = decode(self._recv())

    def _recv(self):
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        return line[:-1].decode()

    def call(self, name, *args, **kwargs):
        request = {"action": "call", "name": name, "args": args, "kwargs": kwargs}
        self.sock.sendall(encode(request).encode() + b"\n")
        reply = decode(self._recv())
        if reply["status"] == "ok":
            return reply["ret"]
        assert reply["status"] == "failed", reply
        raise RemoteFailure(reply["exception"])

    def close(self):
        self.lines.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_encoder_writes_the_documented_tuple():
    assert encode({"args": (5,)}) == '{"args":{"__jsonclass__":["tuple",[[5]]]}}'
    assert encode(()) == '{"__jsonclass__":["tuple",[[]]]}'


# --------------------------------------------------------------------------- against a master



@pytest.fixture(scope="module")
def master(tmp_path_factory):
    from conftest import Lab
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.write("device_db.py", 'device_db = {"probe": {"type": "local", "module": "os", '
                              '"class": "getcwd", "arguments": {}}, "alias": "probe"}\n')
    lab.experiment("slow", SLOW.replace("from labpipe.experiment import *\n", ""))
    lab.experiment("ask", ASK.replace("from labpipe.experiment import *\n", ""))
    m = MasterProcess(lab.root, "--name", "sipyco-style")
    m.lab = lab
    yield m
    m.stop()


def rpc(master, target):
    return SipycoStyleClient(master.ports["control"], target)


def wait_status(schedule, rid, wanted):
    wait_for(lambda: schedule.call("get_status").get(rid, {}).get("status") == wanted,
             timeout=60)


def wait_gone(schedule, rid):
    wait_for(lambda: rid not in schedule.call("get_status"), timeout=60)


def test_master_management_get_name(master):
    with rpc(master, "master_management") as mm:
        assert {"get_name", "terminate"} <= mm.methods
        assert mm.call("get_name") == "sipyco-style"


def test_schedule_methods(master):
    expid = {"file": "repository/slow.py", "class_name": None, "arguments": {"steps": 100000},
             "log_level": 30, "devarg_override": {}}
    with rpc(master, "schedule") as schedule:
        rid = schedule.call("submit", "main", expid, 0, None, False)
        assert isinstance(rid, int)
        wait_status(schedule, rid, "running")
        status = schedule.call("get_status")[rid]
        assert status["pipeline"] == "main" and status["expid"]["file"] == expid["file"]
        assert schedule.call("check_pause", rid) is False
        assert schedule.call("check_termination", rid) is False
        schedule.call("request_termination", rid)
        assert schedule.call("check_termination", rid) is True
        schedule.call("delete", rid)
        wait_gone(schedule, rid)
        # keyword arguments go in the kwargs dict
        later = schedule.call("submit", "later", expid, priority=2,
                              due_date=time.time() + 3600, flush=True)
        entry = schedule.call("get_status")[later]
        assert entry["priority"] == 2 and entry["flush"] is True
        assert entry["status"] == "pending"
        schedule.call("delete", later)
        wait_gone(schedule, later)


def test_delete_and_terminate_a_rid_not_in_the_schedule_return_normally(master):
    with rpc(master, "schedule") as schedule:
        assert schedule.call("delete", 987654) is None
        assert schedule.call("request_termination", 987654) is None


def test_experiment_db_methods(master):
    with rpc(master, "experiment_db") as db:
        assert db.call("scan_repository") is None
        assert db.call("scan_repository", None) is None
        assert db.call("scan_repository_async") is None
        described = db.call("examine", "slow.py")
        assert set(described["Slow"]) >= {"name", "arginfo", "argument_ui",
                                          "scheduler_defaults"}
        assert described["Slow"]["arginfo"]["steps"][0]["ty"] == "NumberValue"
        outside = db.call("examine", "repository/ask.py", False)
        assert "Ask" in outside
        assert "Ask" in db.call("examine", "ask.py", use_repository=True, revision=None)
        root = db.call("root")
        assert isinstance(root, str) and root
        top = db.call("list_directory", "")
        assert "repository/" in top and "device_db.py" in top
        assert "slow.py" in db.call("list_directory", "repository")


def test_dataset_db_methods(master):
    with rpc(master, "dataset_db") as datasets:
        datasets.call("set", "wire.x", (1, 2), True, {"unit": "ms"})
        assert datasets.call("get", "wire.x") == (1, 2)
        assert datasets.call("get_metadata", "wire.x") == {"unit": "ms"}
        datasets.call("set", "wire.y", [1, 2, 3], persist=False)
        datasets.call("update", {"action": "append", "path": ["wire.y", 1], "x": 4})
        assert datasets.call("get", "wire.y") == [1, 2, 3, 4]
        datasets.call("delete", "wire.y")
        with pytest.raises(RemoteFailure) as missing:
            datasets.call("get", "wire.y")
        assert missing.value.cls == "KeyError"


def test_device_db_methods(master):
    with rpc(master, "device_db") as devices:
        assert devices.call("scan") is None
        ddb = devices.call("get_device_db")
        assert ddb["probe"]["class"] == "getcwd" and ddb["alias"] == "probe"
        assert devices.call("get", "probe")["module"] == "os"
        assert devices.call("get", "alias") == "probe"
        assert devices.call("get", "alias", True)["class"] == "getcwd"
        assert devices.call("get", "alias", resolve_alias=True)["class"] == "getcwd"


def test_interactive_arg_db_methods(master):
    expid = {"file": "repository/ask.py", "class_name": None, "arguments": {},
             "log_level": 30}
    with rpc(master, "schedule") as schedule, \
            rpc(master, "interactive_arg_db") as ia, rpc(master, "dataset_db") as datasets:
        rid = schedule.call("submit", "main", expid, 0, None, False)
        wait_for(lambda: master.json("show", "interactive-args").get(str(rid)), timeout=60)
        ia.call("supply", rid, {"gain": 2.5})
        wait_gone(schedule, rid)
        assert datasets.call("get", "ask.result") == 2.5
        rid = schedule.call("submit", "main", expid, 0, None, False)
        wait_for(lambda: master.json("show", "interactive-args").get(str(rid)), timeout=60)
        ia.call("cancel", rid)
        wait_gone(schedule, rid)
        assert datasets.call("get", "ask.result") == "cancelled"


def test_master_management_terminate(tmp_path):
    from conftest import Lab
    m = MasterProcess(Lab(tmp_path).root)
    try:
        with rpc(m, "master_management") as mm:
            assert mm.call("terminate") is None
        assert m.process.wait(timeout=60) == 0
    finally:
        m.stop()
