"""labpipe-client, every command against a real labpipe-master process: output for
people and for scripts (--json), error paths and exit codes (2 usage, 3 refused,
4 unreachable, 1 for ``wait`` on a run that did not complete)."""

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import FAILING, GATED, MasterProcess, terminate, wait_for

ASK = """
from labpipe.experiment import *

class Ask(EnvExperiment):
    def run(self):
        try:
            with self.interactive("Calibration") as ia:
                ia.setattr_argument("gain", NumberValue(1.0))
                ia.setattr_argument("note", StringValue("none"))
        except CancelledArgsError:
            self.set_dataset("ask.result", "cancelled", broadcast=True)
        else:
            self.set_dataset("ask.result", [ia.gain, ia.note], broadcast=True)
"""

CHATTY = """
import logging
from labpipe.experiment import *

class Chatty(EnvExperiment):
    def build(self):
        self.setattr_argument("word", StringValue("hello"))

    def run(self):
        logging.getLogger("chatty").warning("says %s", self.word)
        self.ccb.issue("create_applet", "plot", "plot.py", group="chatty")
"""

DEVICES = """
device_db = {
    "camera": {"type": "controller", "host": "::1", "port": 4000, "command": "cam"},
    "cam": "camera",
}
"""


@pytest.fixture
def master(lab):
    """A master of its own for each test (no test sees another's runs or datasets)."""
    lab.write("device_db.py", DEVICES)
    for name, source in [("gated", GATED), ("failing", FAILING), ("ask", ASK),
                         ("chatty", CHATTY)]:
        lab.write(f"repository/{name}.py", source)
    m = MasterProcess(lab.root)
    m.lab = lab
    yield m
    m.stop()


def refused(result, *fragments):
    """The command failed with exit code 3 and one line naming the fragments."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


class Follower:
    """A long-running client command whose stdout lines are read in a thread."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line within {timeout} s; got {seen}")

    def stop(self):
        code = terminate(self.process, 10, signal.SIGINT)
        stderr = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, stderr


def test_submit_wait_history_resubmit(master):
    m = master
    rid = m.submit("-p", "calib", "-P", "2", "repository/gated.py", "tag=one")
    out = m.cli("wait", str(rid)).stdout
    assert f"RID:        {rid}" in out and "completed" in out and "calib" in out
    record = m.json("wait", str(rid))
    assert record["status"] == "completed" and record["rid"] == rid
    assert record["expid"]["arguments"] == {"tag": "one"}
    assert record["priority"] == 2 and record["error"] is None
    assert record["results"].startswith("results")
    assert os.path.exists(os.path.join(m.lab.root, record["results"]))

    # a failed run: wait exits with 1, the error text is kept
    failed = m.submit("repository/failing.py")
    result = m.cli("wait", str(failed), check=False)
    assert result.returncode == 1 and "failed" in result.stderr
    assert "the magnet quenched" in result.stdout

    table = m.cli("history").stdout.splitlines()
    assert table[0].split()[:3] == ["RID", "Status", "Pipeline"]
    assert table[1].split()[:2] == [str(failed), "failed"]
    assert table[2].split()[:3] == [str(rid), "completed", "calib"]
    assert "Gated" in table[2] and "Failing" in table[1]
    assert m.cli("show", "history").stdout.splitlines()[:3] == table[:3]
    records = m.json("history", "-n", "1", "--before", str(failed))
    assert [r["rid"] for r in records] == [rid]
    assert m.json("history", str(failed))["error"].endswith("the magnet quenched")
    assert "the magnet quenched" in m.cli("history", str(failed)).stdout

    # resubmit with changed arguments and pipeline; the rest is the same
    again = int(m.cli("resubmit", "-p", "other", str(rid), "tag=two").stdout.split()[1])
    record = m.json("wait", str(again))
    assert record["pipeline"] == "other" and record["priority"] == 2
    assert record["expid"]["arguments"] == {"tag": "two"}
    with m.client("dataset_db") as datasets:
        assert isinstance(datasets.get("ended_two"), float)
    assert m.json("resubmit", str(again))["rid"] > again
    assert m.json("submit", "repository/gated.py", "tag=json")["rid"] > again + 1

    refused(m.cli("wait", "99999", check=False), "99999")
    refused(m.cli("history", "99999", check=False), "99999")
    refused(m.cli("resubmit", "99999", check=False), "99999")


def test_wait_timeout_delete_and_graceful(master):
    m = master
    gate = m.lab.path("gate-wait")
    rid = m.submit("repository/gated.py", f"gate={json.dumps(gate)}", "tag=w")
    refused(m.cli("wait", "--timeout", "0.3", str(rid), check=False), str(rid))
    m.cli("delete", str(rid))
    result = m.cli("--json", "wait", str(rid), check=False)
    assert result.returncode == 1 and json.loads(result.stdout)["status"] == "deleted"
    rid = m.submit("repository/gated.py", f"gate={json.dumps(gate)}", "tag=g")
    with m.client("schedule") as schedule:
        wait_for(lambda: schedule.get_status()[rid]["status"] == "running")
        m.cli("delete", "-g", str(rid))
        assert schedule.check_termination(rid) is True  # the experiment never checks
    with open(gate, "w"):
        pass
    assert m.json("wait", str(rid))["status"] == "completed"
    # ARTIQ semantics: deleting a RID not (or no longer) in the schedule does nothing
    for args in (("delete", "99999"), ("delete", "-g", str(rid))):
        result = m.cli(*args, check=False)
        assert (result.returncode, result.stderr) == (0, "")


def test_show_schedule_and_watch(master):
    m = master
    gate = m.lab.path("gate-watch")
    watch = Follower(m.command("--json", "show", "schedule", "--watch"))
    try:
        first = json.loads(watch.until(lambda line: True))
        rid = m.submit("-p", "watched", "repository/gated.py", f"gate={json.dumps(gate)}",
                       "tag=watch")
        watch.until(lambda line: json.loads(line).get(str(rid), {}).get("status")
                    == "running")
        assert isinstance(first, dict)
        table = m.cli("show", "schedule").stdout
        header, *rows = table.splitlines()
        assert header.split()[:3] == ["RID", "Pipeline", "Status"]
        assert any(r.split()[:3] == [str(rid), "watched", "running"] for r in rows)
        status = m.json("show", "schedule")
        assert status[str(rid)]["expid"]["file"] == "repository/gated.py"
        with open(gate, "w"):
            pass
        watch.until(lambda line: str(rid) not in json.loads(line))
    finally:
        code, stderr = watch.stop()
    assert code == 0 and "Traceback" not in stderr
    # the table view of --watch
    watch = Follower(m.command("show", "schedule", "--watch"))
    try:
        watch.until(lambda line: line.startswith("RID") or "Schedule is empty" in line)
    finally:
        watch.stop()


def test_datasets(master):
    m = master
    m.cli("set-dataset", "--persist", "calib.gain", "1.5")
    m.cli("set-dataset", "calib.points", "[1, 2, 3]")
    m.cli("set-dataset", "calib.name", '"beam"')
    data = m.json("show", "datasets")
    assert data["calib.gain"] == [True, 1.5, {}]
    assert data["calib.points"] == [False, [1, 2, 3], {}]
    table = m.cli("show", "datasets").stdout.splitlines()
    assert table[0].split() == ["Key", "Persist", "Value", "Unit"]
    assert any(r.split()[:3] == ["calib.gain", "yes", "1.5"] for r in table)
    m.cli("set-dataset", "--no-persist", "calib.gain", "2.5")
    assert m.json("show", "datasets")["calib.gain"] == [False, 2.5, {}]
    m.cli("del-dataset", "calib.gain")
    assert "calib.gain" not in m.json("show", "datasets")
    refused(m.cli("del-dataset", "calib.gain", check=False), "calib.gain")
    bad = m.cli("set-dataset", "calib.x", "[1, 2", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    both = m.cli("set-dataset", "--persist", "--no-persist", "k", "1", check=False)
    assert both.returncode == 2


def test_devices_and_scan(master):
    m = master
    assert m.json("show", "devices") == {
        "camera": {"type": "controller", "host": "::1", "port": 4000, "command": "cam"},
        "cam": "camera"}
    table = m.cli("show", "devices").stdout.splitlines()
    assert table[0].split() == ["Key", "Type", "Details"]
    assert table[1].split() == ["cam", "alias", "->", "camera"]
    assert table[2].split() == ["camera", "controller", "::1:4000"]
    m.lab.write("device_db.py", DEVICES.replace('"cam": "camera",', '"cam2": "camera",'))
    m.cli("scan-devices")
    assert set(m.json("show", "devices")) == {"camera", "cam2"}
    m.lab.write("device_db.py", "device_db = {\n")
    refused(m.cli("scan-devices", check=False))
    m.lab.write("device_db.py", DEVICES)
    m.cli("scan-devices")


def test_repository_and_ls(master):
    m = master
    names = m.cli("ls").stdout.split()
    assert "repository/" in names and "device_db.py" in names
    assert m.json("ls", "repository") == sorted(
        os.listdir(m.lab.path("repository")))
    refused(m.cli("ls", "/etc", check=False), "outside")
    m.lab.write("repository/late.py", GATED.replace("Gated", "Late"))
    m.cli("scan-repository")
    with m.client("experiment_db") as experiment_db:
        assert "Late" in experiment_db.examine("late.py")
    m.cli("scan-repository", "--async")
    rid = m.submit("-R", "-c", "Late", "late.py", "tag=late")
    assert m.json("wait", str(rid))["status"] == "completed"
    # the experiment list as the master scanned it
    m.lab.write("repository/broken.py", "from labpipe.experiment import *\nclass (\n")
    m.cli("scan-repository")
    listed = m.json("show", "explist")
    assert {"file": "late.py", "class_name": "Late"}.items() <= \
        next(e for e in listed["explist"].values() if e["class_name"] == "Late").items()
    assert "broken.py" in listed["errors"] and listed["status"]["cur_rev"] == "N/A"
    table = m.cli("show", "explist").stdout
    assert "late.py" in table and "skipped broken.py" in table
    os.remove(m.lab.path("repository/broken.py"))
    m.cli("scan-repository")


def test_submission_refused_with_the_masters_message(master):
    m = master
    refused(m.cli("submit", "repository/nothere.py", check=False), "nothere.py")
    refused(m.cli("submit", "-c", "Nope", "repository/gated.py", check=False), "Nope")
    usage = m.cli("submit", "repository/gated.py", "tag", check=False)
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    for due_date in ("not a date", "+soon", "+inf"):
        assert m.cli("submit", "-t", due_date, "repository/gated.py",
                     check=False).returncode == 2
    for timeout in ("nan", "-1"):
        assert m.cli("wait", "--timeout", timeout, "1", check=False).returncode == 2
    assert m.cli("history", "abc", check=False).returncode == 2
    assert m.cli("show", "nothing", check=False).returncode == 2
    assert m.cli(check=False).returncode == 2


def test_interactive_arguments(master):
    m = master
    rid = m.submit("repository/ask.py")
    wait_for(lambda: str(rid) in m.json("show", "interactive-args"))
    request = m.json("show", "interactive-args")[str(rid)]
    assert request["title"] == "Calibration"
    assert [d[0] for d in request["arglist_desc"]] == ["gain", "note"]
    table = m.cli("show", "interactive-args").stdout.splitlines()
    assert table[1].split() == [str(rid), "Calibration", "gain,", "note"]
    refused(m.cli("supply-interactive", str(rid), "other=1", check=False), "other")
    m.cli("supply-interactive", str(rid), "gain=2.5", "note=hi")
    assert m.json("wait", str(rid))["status"] == "completed"
    with m.client("dataset_db") as datasets:
        assert datasets.get("ask.result") == [2.5, "hi"]
    assert "No run waits" in m.cli("show", "interactive-args").stdout

    rid = m.submit("repository/ask.py")
    wait_for(lambda: str(rid) in m.json("show", "interactive-args"))
    m.cli("cancel-interactive", str(rid))
    assert m.json("wait", str(rid))["status"] == "completed"
    with m.client("dataset_db") as datasets:
        assert datasets.get("ask.result") == "cancelled"
    refused(m.cli("cancel-interactive", str(rid), check=False), str(rid))
    refused(m.cli("supply-interactive", str(rid), "gain=1", check=False), str(rid))


def test_follow_log_and_ccb(master):
    m = master
    log = Follower(m.command("show", "log"))
    ccb = Follower(m.command("--json", "show", "ccb"))
    try:
        deadline = time.monotonic() + 30
        # the followers connect asynchronously: submit until both saw a message
        while True:
            m.submit("repository/chatty.py", "word=bonjour")
            try:
                line = log.until(lambda line: "says bonjour" in line, timeout=3)
                message = json.loads(ccb.until(lambda line: "create_applet" in line,
                                               timeout=3))
                break
            except AssertionError:
                assert time.monotonic() < deadline
        assert "WARNING" in line and "worker(" in line and "chatty" in line
        assert message == {"service": "create_applet", "args": ["plot", "plot.py"],
                           "kwargs": {"group": "chatty"}}
    finally:
        for follower in (log, ccb):
            code, stderr = follower.stop()
            assert code == 0 and "Traceback" not in stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_master_exit_code_4(master):
    m = master
    port = str(_free_port())
    for args in (["--port", port, "show", "schedule"],
                 ["--port", port, "wait", "1"],
                 ["--port-notify", port, "show", "datasets"],
                 ["--port-notify", port, "show", "schedule", "--watch"],
                 ["--port-broadcast", port, "show", "log"]):
        result = subprocess.run(m.command(*args), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 4, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "cannot reach" in result.stderr and port in result.stderr


def test_terminate(lab):
    lab.experiment("gated", GATED)
    m = MasterProcess(lab.root)
    try:
        assert m.cli("terminate").returncode == 0
        assert m.process.wait(timeout=30) == 0
        gone = m.cli("show", "schedule", check=False)
        assert gone.returncode == 4 and "Traceback" not in gone.stderr
    finally:
        m.stop()
