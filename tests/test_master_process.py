"""labpipe-master as a real process: ready line, CLI client, hostile input, shutdown."""

import os
import random
import signal
import socket
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

import terminal
from conftest import SLOW, MasterProcess, descendants, wait_for
from labpipe.protocol import pyon

@pytest.fixture
def master(lab):
    lab.experiment("slow", SLOW)
    m = MasterProcess(lab.root)
    yield m
    m.stop()


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
    # (deleting an unknown RID is no error, as in ARTIQ: changing one is)
    assert master.cli("delete", "12345", check=False).returncode == 0
    refused = master.cli("change", "12345", "-P", "3", check=False)
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


CHATTY = """
import logging
from labpipe.experiment import *

class Chatty(EnvExperiment):
    def build(self):
        self.setattr_argument("lines", NumberValue(10, step=1, precision=0, type="int"))

    def run(self):
        for i in range(self.lines):
            logging.getLogger("chatty").warning("line %d %s", i, "x" * 200)
"""


def test_a_chatty_master_never_blocks_on_its_output(lab):
    # some 4 MB of log lines on the master's stderr, far more than a pipe holds
    lab.experiment("chatty", CHATTY)
    m = MasterProcess(lab.root)
    try:
        rid = m.submit("repository/chatty.py", "lines=20000")
        with m.client("history") as history:
            assert history.wait(rid, 60)["status"] == "completed"
        wait_for(lambda: "chatty:line 19999 " in m.stderr.tail(1))
        assert "chatty:line 19999 " in m.report()
    finally:
        m.stop()


def test_start_says_what_it_is_doing_on_a_terminal(lab):
    """On a terminal, the slow steps of a start (the worker template: seconds with
    bluesky; the repository scan) are said before the ready line; with -q, or piped
    (every other test here), nothing but the ready line."""
    lab.experiment("hello", "class Hello(EnvExperiment):\n    def run(self): pass\n")
    command = [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
               "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
               "--port-broadcast", "0"]
    for extra, said in (([], [
            "labpipe-master: starting the worker template (it imports numpy, h5py)...",
            "labpipe-master: scanning the experiment repository..."]), (["-q"], [])):
        master = terminal.Terminal(command + extra, cwd=lab.root)
        try:
            text = master.until(lambda text: " ready on 127.0.0.1" in text)
        finally:
            master.interrupt()
            assert master.wait(30) == 0
        lines = text.splitlines()
        assert lines[:-1] == said and lines[-1].startswith("labpipe-master ready on"), \
            text


#: This suite's conftest, loaded under another name in a separate pytest run
SUITE_CONFTEST = """
import importlib.util, sys
sys.path.insert(0, {here!r})
spec = importlib.util.spec_from_file_location("suite_conftest", {here!r} + "/conftest.py")
suite = sys.modules["suite_conftest"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_runtest_setup, pytest_runtest_makereport = (suite.pytest_runtest_setup,
                                                   suite.pytest_runtest_makereport)
"""

FAILING_WITH_A_MASTER = """
import suite_conftest as suite

def test_fails(tmp_path):
    lab = suite.Lab(tmp_path)
    lab.experiment("chatty", {chatty!r})
    m = suite.MasterProcess(lab.root)
    try:
        rid = m.submit("repository/chatty.py", "lines=3")
        with m.client("history") as history:
            assert history.wait(rid, 60)["status"] == "completed"
        suite.wait_for(lambda: "chatty:line 2 " in m.stderr.tail(1))
    finally:
        m.stop()
    assert False, "failing on purpose"
"""


def test_a_failing_test_report_shows_the_masters_output_tail(pytester):
    here = os.path.dirname(os.path.abspath(__file__))
    pytester.makeconftest(SUITE_CONFTEST.format(here=here))
    pytester.makepyfile(test_inner=FAILING_WITH_A_MASTER.format(chatty=CHATTY))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "failing on purpose" in output
    section = output[output.index(" stderr -"):]
    assert "(exit code 0), last 60 lines of its error output" in section
    assert "chatty:line 0 " in section and "chatty:line 2 " in section


def test_sigterm_stops_running_workers(lab):
    lab.experiment("slow", SLOW)
    m = MasterProcess(lab.root)
    try:
        rid = m.submit("repository/slow.py", "steps=100000")
        with m.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["status"] == "running")
        started = descendants(m.process.pid)
        assert started  # the forkserver and the running worker at least
        m.process.send_signal(signal.SIGTERM)
        assert m.process.wait(timeout=30) == 0
        # every process the master started is gone
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in started))
    finally:
        m.stop()
    assert pyon.load_file(os.path.join(lab.root, "last_rid.pyon")) == rid


def test_control_port_exposes_only_the_documented_methods(master):
    expected = {
        "schedule": {"submit", "delete", "request_termination", "get_status",
                     "check_pause", "check_termination", "submit_plan", "change", "hold",
                     "release", "set_device_check", "validate",
                     # docs/queue-control.md "Queue positions", "Immediate runs"
                     "move", "move_batch", "clear", "execute_now", "set_stop_on_failure",
                     "call_function", "task_status", "task_result"},  # docs/functions.md
        "dataset_db": {"get", "get_metadata", "set", "update", "delete"},
        "interactive_arg_db": {"supply", "cancel"},
        "master_management": {"get_name", "terminate"},
        "device_db": {"scan", "get_device_db", "get"},
        "experiment_db": {"scan_repository", "scan_repository_async", "examine",
                          "list_directory", "root"},
        "history": {"get", "list", "resubmit", "wait", "read_results"},
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
