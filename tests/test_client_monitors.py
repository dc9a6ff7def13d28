"""Monitors that survive the master, and the client's exit codes.

``show schedule --watch`` (table and ``--json``), ``show datasets --watch`` and ``show
log`` against a real labpipe-master that is killed (SIGKILL) and started again on the
same ports: each says it lost the master, says when it is back, and then shows the new
master's state. Exit codes: 130 for Ctrl-C on ``wait`` (SIGINT from a terminal), 1 and
a traceback under ``-v`` for a bug of the client itself, 3 for a refusal, 2 for usage.
"""

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import Lab, terminate
from terminal import Terminal
from test_master_process import MasterProcess

GATED = """
import logging, os, time
from labpipe.experiment import *

class Gated(EnvExperiment):
    def build(self):
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("word", StringValue("hello"))

    def run(self):
        logging.getLogger("gated").warning("says %s", self.word)
        self.set_dataset("said", self.word, broadcast=True)
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
"""


class Watched:
    """A long-running client command; its stdout and stderr lines read in threads."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out, self.err = queue.Queue(), queue.Queue()
        self.seen = {"out": [], "err": []}
        for stream, lines in ((self.process.stdout, self.out),
                              (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.put(line.rstrip("\n"))

    def until(self, which, predicate, timeout=60):
        """The first line of stdout ("out") or stderr ("err") that predicate accepts."""
        lines = self.out if which == "out" else self.err
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen[which].append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such {which} line within {timeout} s: {self.seen}")

    def stop(self):
        code = terminate(self.process, 10, signal.SIGINT)
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()
        return code


def _until_logged(m, log, word, timeout=60):
    """Submit runs that log word until the log follower shows it (it connects on its
    own time: nothing is broadcast before it does)."""
    deadline = time.monotonic() + timeout
    while True:
        m.submit("repository/gated.py", f"word={word}")
        try:
            return log.until("out", lambda line: f"says {word}" in line, timeout=3)
        except AssertionError:
            assert time.monotonic() < deadline, log.seen


def test_watches_and_log_survive_a_master_restart(lab):
    lab.experiment("gated", GATED)
    m = MasterProcess(lab.root)
    watches = {"json": Watched(m.command("--json", "show", "schedule", "--watch")),
               "table": Watched(m.command("show", "schedule", "--watch")),
               "datasets": Watched(m.command("--json", "show", "datasets", "--watch")),
               "log": Watched(m.command("show", "log"))}
    restarted = None
    try:
        watches["json"].until("out", lambda line: isinstance(json.loads(line), dict))
        watches["table"].until("out", lambda line: "Schedule is empty" in line
                               or line.startswith("RID"))
        watches["datasets"].until("out", lambda line: True)
        _until_logged(m, watches["log"], "before")

        ports = m.ports
        m.process.send_signal(signal.SIGKILL)
        m.process.wait(timeout=30)
        for name, watch in watches.items():
            notice = watch.until("err", lambda line: "lost the master" in line)
            assert "reconnecting" in notice, (name, notice)

        restarted = MasterProcess(lab.root, "--port-control", str(ports["control"]),
                                  "--port-notify", str(ports["notify"]),
                                  "--port-broadcast", str(ports["broadcast"]),
                                  "--port-logging", str(ports["logging"]))
        for name, watch in watches.items():
            watch.until("err", lambda line: "reconnected to the master" in line)
        # and then the new master's state
        gate = lab.path("gate-after")
        rid = restarted.submit("-p", "after", "repository/gated.py", f"gate={gate}",
                               "word=after")
        watches["json"].until("out", lambda line: json.loads(line).get(str(rid), {})
                              .get("status") == "running")
        watches["table"].until("out", lambda line: line.split()[:3]
                               == [str(rid), "after", "running"])
        watches["datasets"].until("out", lambda line: json.loads(line).get("said", [0, 0])[1]
                                  == "after")
        watches["log"].until("out", lambda line: "says after" in line)
        with open(gate, "w"):
            pass
    finally:
        codes = {name: watch.stop() for name, watch in watches.items()}
        m.stop()
        if restarted is not None:
            restarted.stop()
    assert codes == {name: 0 for name in watches}  # Ctrl-C ends a monitor: success
    for watch in watches.values():
        assert not any("Traceback" in line for line in watch.seen["err"])


def test_a_monitor_never_starts_against_nothing(lab):
    m = MasterProcess(lab.root)
    ports = m.ports
    m.stop()
    result = subprocess.run(
        [sys.executable, "-m", "labpipe.client.main", "--port-notify",
         str(ports["notify"]), "show", "datasets", "--watch"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 4 and "cannot reach" in result.stderr


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.experiment("gated", GATED)
    m = MasterProcess(lab.root)
    m.lab = lab
    yield m
    m.stop()


def test_ctrl_c_on_wait_exits_130(master):
    m = master
    gate = m.lab.path("gate-ctrl-c")
    rid = m.submit("repository/gated.py", f"gate={gate}")
    terminal = Terminal(m.command("wait", str(rid)))
    try:
        terminal.until(lambda text: f"waiting for RID {rid}" in text)
        terminal.interrupt()
        assert terminal.wait(timeout=30) == 130
    finally:
        terminal.kill()
        with open(gate, "w"):
            pass
    assert "labpipe-client: interrupted" in terminal.text
    assert "Traceback" not in terminal.text
    assert m.json("wait", str(rid))["status"] == "completed"  # the run went on


BUGGY = ("import sys, labpipe.client.show as show\n"
         "show.format_history = lambda *args: 1 / 0  # a bug, put in on purpose\n"
         "from labpipe.client.main import main\n"
         "main(sys.argv[1:])\n")


def test_a_bug_of_the_client_is_exit_1_with_the_traceback_under_v(master):
    m = master
    command = [sys.executable, "-c", BUGGY] + m.command()[3:]
    quiet = subprocess.run(command + ["history"], capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        "labpipe-client: internal error: ZeroDivisionError: division by zero "
        "(run with -v for the traceback)"]
    verbose = subprocess.run(command + ["-v", "history"], capture_output=True, text=True,
                             timeout=60)
    assert verbose.returncode == 1
    assert verbose.stderr.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError" in verbose.stderr and "refused" not in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == \
        "labpipe-client: internal error: ZeroDivisionError: division by zero"


def test_refusal_is_3_and_usage_is_2(master):
    m = master
    refused = m.cli("change", "12345", "-P", "1", check=False)
    assert refused.returncode == 3 and refused.stderr.startswith("labpipe-client: refused: ")
    assert len(refused.stderr.strip().splitlines()) == 1
    for args in (["history", "abc"], ["submit", "repository/gated.py", "gate"],
                 ["submit", "-t", "later", "repository/gated.py"], ["nothing"]):
        result = m.cli(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
