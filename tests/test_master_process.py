"""labpipe-master as a real process: ready line, CLI client, hostile input, shutdown."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client

SLOW = """
import time
from labpipe.experiment import *

class Slow(EnvExperiment):
    def build(self):
        self.setattr_argument("steps", NumberValue(10, step=1, precision=0, type="int"))

    def run(self):
        for i in range(self.steps):
            self.set_dataset("slow.step", i, broadcast=True)
            time.sleep(0.01)
"""


class MasterProcess:
    """labpipe-master started in a lab directory with every port picked free."""

    def __init__(self, lab_dir, *extra):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
             "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
             "--port-broadcast", "0", *extra],
            cwd=lab_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if "ready" not in line:
            self.process.kill()
            raise AssertionError(f"master did not start: {line!r} "
                                 f"{self.process.stderr.read()}")
        ports = line.split(": ", 1)[1]
        self.ports = {name: int(port) for name, port in
                      (p.strip().split(" ") for p in ports.split(","))}

    def client(self, target):
        return Client("127.0.0.1", self.ports["control"], target, timeout=20)

    def command(self, *args):
        """The labpipe-client command line for this master (every port given)."""
        return [sys.executable, "-m", "labpipe.client.main",
                "--port", str(self.ports["control"]),
                "--port-notify", str(self.ports["notify"]),
                "--port-broadcast", str(self.ports["broadcast"]), *args]

    def cli(self, *args, check=True):
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args):
        return json.loads(self.cli("--json", *args).stdout)

    def submit(self, *args):
        """labpipe-client submit; the RID."""
        return int(self.cli("submit", *args).stdout.split("RID: ")[1])

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def master(lab):
    lab.experiment("slow", SLOW)
    m = MasterProcess(lab.root)
    yield m
    m.stop()


def _descendants(pid):
    """All processes below pid, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_client_submit_show_delete(master, lab):
    rid = master.submit("-P", "3", "repository/slow.py", "steps=100000")
    with master.client("schedule") as schedule:
        wait_for(lambda: schedule.get_status()[rid]["status"] == "running")
        table = master.cli("show", "schedule").stdout
        assert str(rid) in table and "running" in table and "repository/slow.py" in table
        master.cli("delete", str(rid))
        wait_for(lambda: rid not in schedule.get_status())


def test_client_errors_are_one_line_with_exit_codes(master, lab):
    bad = master.cli("submit", "repository/slow.py", "steps", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    refused = master.cli("delete", "12345", check=False)
    assert refused.returncode == 3
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "12345" in refused.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    unreachable = master.cli("--port", str(free_port), "show", "schedule", check=False)
    assert unreachable.returncode == 4
    assert "Traceback" not in unreachable.stderr


def _garbage(rng):
    choices = [
        b"\xff\xfe\x00garbage\n",
        b"ARTIQ pc_rpc\nnot-a-target pyon_v2\n",
        b"ARTIQ sync_struct\nno-such-notifier\n",
        b"ARTIQ logging\n" + b"x" * 1000 + b"\n",
        b"{" * 5000 + b"\n",
        b"A" * (17 * 1024 * 1024),  # longer than any line limit
        bytes(rng.getrandbits(8) for _ in range(2000)),
    ]
    return rng.choice(choices)


def test_hostile_input_on_every_port_while_running(master, lab):
    rng = random.Random(1234)
    first = master.submit("repository/slow.py", "steps=50")
    for _ in range(6):
        for port in master.ports.values():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(_garbage(rng))
                    s.shutdown(socket.SHUT_WR)
                    s.recv(100)
                except OSError:
                    pass
    # RPC with hostile requests after a proper handshake
    with socket.create_connection(("127.0.0.1", master.ports["control"]), timeout=5) as s:
        f = s.makefile("rwb")
        f.write(b"ARTIQ pc_rpc\n"); f.flush(); f.readline()
        f.write(b"schedule pyon_v2\n"); f.flush(); f.readline()
        for request in [b"[]", b'{"action": "call", "name": "_find", "args": [1], "kwargs": {}}',
                        b'{"action": "call", "name": "submit", "args": "x", "kwargs": {}}',
                        b'{"action": "call", "name": "nope", "args": [], "kwargs": {}}']:
            f.write(request + b"\n"); f.flush()
            assert pyon.decode(f.readline())["status"] == "failed"
    assert master.process.poll() is None
    second = master.submit("repository/slow.py", "steps=3")
    with master.client("schedule") as schedule:
        wait_for(lambda: first not in schedule.get_status()
                 and second not in schedule.get_status())
    with master.client("dataset_db") as datasets:
        assert datasets.get("slow.step") == 2


def test_sigterm_stops_running_workers(lab):
    lab.experiment("slow", SLOW)
    m = MasterProcess(lab.root)
    try:
        rid = m.submit("repository/slow.py", "steps=100000")
        with m.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["status"] == "running")
        descendants = _descendants(m.process.pid)
        assert descendants  # the forkserver and the running worker at least
        m.process.send_signal(signal.SIGTERM)
        assert m.process.wait(timeout=30) == 0
        # every process the master started is gone
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in descendants))
    finally:
        m.stop()
    assert pyon.load_file(os.path.join(lab.root, "last_rid.pyon")) == rid


def test_control_port_exposes_only_the_documented_methods(master):
    expected = {
        "schedule": {"submit", "delete", "request_termination", "get_status",
                     "check_pause", "check_termination", "submit_plan", "change", "hold",
                     "release", "set_device_check", "validate"},
        "dataset_db": {"get", "get_metadata", "set", "update", "delete"},
        "interactive_arg_db": {"supply", "cancel"},
        "master_management": {"get_name", "terminate"},
        "device_db": {"scan", "get_device_db", "get"},
        "experiment_db": {"scan_repository", "scan_repository_async", "examine",
                          "list_directory", "root"},
        "history": {"get", "list", "resubmit", "wait"},
    }
    for target, methods in expected.items():
        with master.client(target) as client:
            assert set(client.get_rpc_method_list()["methods"]) == methods, target
    with master.client("schedule") as schedule:
        with pytest.raises(Exception) as refused:
            schedule.stop()
        assert "stop" in str(refused.value)
        assert schedule.get_status() == {}


@pytest.mark.parametrize("device_db, extra, word", [
    (None, [], "device_db.py"),
    ("device_db = {\n", [], "syntax error"),
    ("device_db = {}\n", ["-g"], "not a Git repository"),
    ("device_db = {}\n", ["-r", "nowhere"], "does not exist"),
    ("device_db = {}\n", ["--log-file", "nowhere/master.log"], "log file"),
    ("device_db = {}\n", ["--bind", "nosuchhost.invalid"], "'nosuchhost.invalid'"),
])
def test_master_refuses_a_bad_lab_with_one_line(lab, device_db, extra, word):
    if device_db is None:
        os.remove(lab.path("device_db.py"))
    else:
        lab.write("device_db.py", device_db)
    result = subprocess.run(
        [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1", "--port-control",
         "0", "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0",
         *extra],
        cwd=lab.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], result.stderr
