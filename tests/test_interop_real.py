"""labpipe driven by ARTIQ's REAL clients: artiq_client, sipyco's clients, the dashboard.

Outside CI: these tests run only when ``LABPIPE_ARTIQ_PYTHON`` names a Python in which
``artiq`` and ``sipyco`` are importable (``pytest -m interop_real``); otherwise they
skip. Each test starts a real labpipe master (every port picked free, bound to
127.0.0.1), runs the real client in that Python, and asserts both the client's exit
code/output and the outcome on the labpipe side (history, datasets, schedule).
They are written to ARTIQ's behaviour, so they show where labpipe differs.

Tests taking ``real`` or ``transport`` run twice: over plain TCP and over mutual TLS
(master ``--ssl CERT KEY PEER``, the clients ``--ssl`` with tls_certs' certificates).
The dashboard tests run the real dashboard under an Xvfb of their own and drive its
widgets from inside its process (DASHBOARD_DRIVER).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ASK, Lab
from labpipe.protocol.rpc import Client
from test_client import Follower
from test_master_process import MasterProcess, wait_for

ARTIQ_PYTHON = os.environ.get("LABPIPE_ARTIQ_PYTHON")


def _artiq_python_problem():
    if not ARTIQ_PYTHON:
        return "LABPIPE_ARTIQ_PYTHON is not set"
    try:
        result = subprocess.run([ARTIQ_PYTHON, "-c", "import artiq, sipyco"],
                                capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return f"LABPIPE_ARTIQ_PYTHON={ARTIQ_PYTHON!r} cannot run: {exc}"
    if result.returncode != 0:
        return (f"LABPIPE_ARTIQ_PYTHON={ARTIQ_PYTHON!r} lacks artiq or sipyco: "
                f"{result.stderr.strip().splitlines()[-1:]}")
    return None


_PROBLEM = _artiq_python_problem()
pytestmark = [pytest.mark.interop_real,
              pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]

SLOW = """
import time
from labpipe.experiment import *

class Slow(EnvExperiment):
    def build(self):
        self.setattr_argument("steps", NumberValue(100000, precision=0, step=1, type="int"))

    def run(self):
        for i in range(self.steps):
            self.set_dataset("slow.step", i, broadcast=True)
            time.sleep(0.01)
"""

GRACEFUL = """
import time
from labpipe.experiment import *

class Graceful(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("graceful.state", "running", broadcast=True)
        while not self.scheduler.check_termination():
            time.sleep(0.01)
        self.set_dataset("graceful.state", "stopped", broadcast=True)
"""

MARK = """
import logging
from labpipe.experiment import *

class Mark(EnvExperiment):
    def build(self):
        self.setattr_argument("tag", StringValue("none"))

    def run(self):
        self.set_dataset("mark." + self.tag, "{version}", broadcast=True)
        logging.getLogger("mark").warning("marked %s", self.tag)
"""

TWO = """
from labpipe.experiment import *

class One(EnvExperiment):
    def run(self):
        self.set_dataset("two.which", "one", broadcast=True)

class Two(EnvExperiment):
    def run(self):
        self.set_dataset("two.which", "two", broadcast=True)
"""


FORM = """
from labpipe.experiment import *

class Form(EnvExperiment):
    def run(self):
        with self.interactive("Settings") as ia:
            ia.setattr_argument("gain", NumberValue(1.0))
            ia.setattr_argument("note", StringValue("default"))
        self.set_dataset("form.result", [ia.gain, ia.note], broadcast=True)
"""

DEVICES = 'device_db = {"probe": {"type": "local", "module": "os", "class": "getcwd", ' \
          '"arguments": {}}}\n'


def git(lab, *args):
    return subprocess.run(["git", *args], cwd=lab.path("repository"), check=True,
                          capture_output=True, text=True).stdout.strip()


def commit_all(lab, message):
    git(lab, "add", "-A")
    git(lab, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q",
        "-m", message)
    return git(lab, "rev-parse", "HEAD")


class Transport:
    """How the master and its clients connect: plain TCP, or mutual TLS (``--ssl``) with
    the certificates of ``tls_certs`` (server, client, untrusted, expired)."""

    def __init__(self, name, certs=None):
        self.name, self.certs = name, certs

    def master_args(self):
        """The master's ``--ssl CERT KEY PEER`` (nothing for plain TCP)."""
        if self.certs is None:
            return []
        return ["--ssl", self.certs.server.cert, self.certs.server.key,
                self.certs.trusted_clients]

    def client_args(self, who="client"):
        """A client's ``--ssl CERT KEY PEER`` as ``who`` (client, untrusted, expired)."""
        if self.certs is None:
            return []
        files = self.certs.client_files(who)
        return ["--ssl", files.cert, files.key, files.peer]

    def context(self):
        """labpipe's own client context (None for plain TCP)."""
        if self.certs is None:
            return None
        from labpipe.protocol import tls
        return tls.client_context(self.certs.client_files())


def make_transport(name, folder):
    if name == "plain":
        return Transport("plain")
    pytest.importorskip("cryptography")
    from tls_certs import make_certs
    return Transport("ssl", make_certs(str(folder)))


class RealMaster(MasterProcess):
    """A labpipe master and the real ARTIQ clients pointed at it (127.0.0.1 only),
    over the given transport. The master's stderr lines are ``log_lines`` (MasterProcess
    reads them)."""

    def __init__(self, lab, transport, *extra):
        super().__init__(lab.root, "-g", *transport.master_args(), *extra)
        self.lab, self.transport = lab, transport

    @property
    def log_lines(self):
        return [line.rstrip("\n") for line in self.stderr.lines]

    def refusals(self):
        """The master's log lines about refused TLS connections."""
        return [line for line in self.log_lines if "refused TLS connection" in line]

    def client(self, target):
        return Client("127.0.0.1", self.ports["control"], target, timeout=20,
                      ssl=self.transport.context())

    def command(self, *args):
        return super().command(*self.transport.client_args(), *args)

    def artiq_command(self, *args, port=None, tls_args=None):
        """``artiq_client -s 127.0.0.1 --port PORT [--ssl ...] ARGS``; tls_args None: the
        transport's own client certificate."""
        port = self.ports["control"] if port is None else port
        tls_args = self.transport.client_args() if tls_args is None else tls_args
        return [ARTIQ_PYTHON, "-m", "artiq.frontend.artiq_client", "-s", "127.0.0.1",
                "--port", str(port), *tls_args, *args]

    def artiq_client(self, *args, port=None, tls_args=None, timeout=60):
        """Run artiq_client (see artiq_command); the CompletedProcess."""
        return subprocess.run(self.artiq_command(*args, port=port, tls_args=tls_args),
                              capture_output=True, text=True, timeout=timeout,
                              cwd=self.lab.root)

    def ok(self, *args):
        result = self.artiq_client(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def submit(self, *args):
        out = self.ok("submit", *args)
        assert out.startswith("RID: "), out
        return int(out.split("RID: ")[1])

    def ended(self, rid, timeout=60):
        with self.client("history") as history:
            return history.wait(rid, timeout)

    def history_rids(self):
        with self.client("history") as history:
            return {record["rid"] for record in history.list(1000)}

    def dataset(self, key):
        with self.client("dataset_db") as datasets:
            return datasets.get(key)

    def status(self):
        with self.client("schedule") as schedule:
            return schedule.get_status()

    def interactive_rids(self):
        return {int(rid) for rid in self.json("show", "interactive-args")}

    def show(self, what):
        """``artiq_client show WHAT`` left running; its output lines, read in a thread."""
        port = self.ports["broadcast" if what in ("log", "ccb") else "notify"]
        return Follower(self.artiq_command("show", what, port=port))

    def sync_follower(self, notifier):
        """The raw lines of a notifier (init, then mods) on a bare socket (in TLS when
        the transport is)."""
        tls_files = self.transport.client_args()[1:]
        script = textwrap.dedent(f"""
            import socket, ssl, sys
            s = socket.create_connection(("127.0.0.1", {self.ports["notify"]}))
            files = {tls_files!r}
            if files:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.load_verify_locations(files[2])
                context.load_cert_chain(files[0], files[1])
                s = context.wrap_socket(s)
            s.sendall(b"ARTIQ sync_struct\\n{notifier}\\n")
            for line in s.makefile("rb"):
                sys.stdout.write(line.decode()); sys.stdout.flush()
            """)
        return Follower([sys.executable, "-c", script])


def start_master(lab, transport, *extra):
    return RealMaster(lab, transport, *extra)


def make_lab(root):
    lab = Lab(root)
    lab.write("device_db.py", DEVICES)
    git(lab, "init", "-q")
    for name, source in [("slow", SLOW), ("graceful", GRACEFUL), ("two", TWO), ("ask", ASK),
                         ("form", FORM), ("mark", MARK.replace("{version}", "v1"))]:
        lab.write(f"repository/{name}.py", source)
    lab.rev1 = commit_all(lab, "first")
    lab.write("repository/mark.py", MARK.replace("{version}", "v2"))
    lab.rev2 = commit_all(lab, "second")
    lab.write("outside/plain.py", MARK.replace("{version}", "plain"))
    return lab


@pytest.fixture(scope="module", params=["plain", "ssl"])
def transport(request, tmp_path_factory):
    """Each test that takes it runs twice: over plain TCP and over --ssl."""
    return make_transport(request.param, tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def real(transport, tmp_path_factory):
    m = start_master(make_lab(tmp_path_factory.mktemp("lab")), transport)
    yield m
    m.stop()


# --------------------------------------------------------------------------- artiq_client

def test_help_runs():
    result = subprocess.run([ARTIQ_PYTHON, "-m", "artiq.frontend.artiq_client", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "scan-repository" in result.stdout


def test_submit_plain_file(real):
    path = real.lab.path("outside", "plain.py")
    rid = real.submit(path, "tag='plain'")
    record = real.ended(rid)
    assert record["status"] == "completed", record
    assert record["expid"]["file"] == path and "repo_rev" not in record["expid"]
    assert real.dataset("mark.plain") == "plain"


def test_submit_repository_head(real):
    rid = real.submit("-R", "mark.py", "tag='head'")
    record = real.ended(rid)
    assert record["status"] == "completed", record
    assert record["repo_rev"] == real.lab.rev2
    assert real.dataset("mark.head") == "v2"


def test_submit_repository_revision(real):
    rid = real.submit("-R", "-r", real.lab.rev1, "mark.py", "tag='old'")
    record = real.ended(rid)
    assert record["status"] == "completed", record
    assert record["repo_rev"] == real.lab.rev1
    assert real.dataset("mark.old") == "v1"
    # git's revision spellings, as ARTIQ's master (pygit2) resolves them
    rid = real.submit("-R", "-r", "HEAD~1", "mark.py", "tag='parent'")
    record = real.ended(rid)
    assert record["status"] == "completed", record
    assert record["repo_rev"] == real.lab.rev1
    assert real.dataset("mark.parent") == "v1"


def test_submit_content(real):
    rid = real.submit("--content", real.lab.path("outside", "plain.py"), "tag='content'")
    record = real.ended(rid)
    assert record["status"] == "completed", record
    assert "content" in record["expid"] and "file" not in record["expid"]
    assert real.dataset("mark.content") == "plain"


def test_submit_scheduling_options_then_delete(real):
    due = "2099-01-02 03:04:05"
    rid = real.submit("-p", "elsewhere", "-P", "3", "-t", due, "-f", "-c", "Two",
                      "-R", "two.py")
    entry = real.status()[rid]
    assert entry["pipeline"] == "elsewhere" and entry["priority"] == 3
    assert entry["flush"] is True and entry["status"] == "pending"
    assert entry["due_date"] == time.mktime(time.strptime(due, "%Y-%m-%d %H:%M:%S"))
    assert entry["expid"]["class_name"] == "Two"
    assert real.ok("delete", str(rid)) == ""
    assert real.ended(rid)["status"] == "deleted"


def test_submit_class_runs_that_class(real):
    rid = real.submit("-c", "Two", "-R", "two.py")
    assert real.ended(rid)["status"] == "completed"
    assert real.dataset("two.which") == "two"


def test_delete_running_and_graceful(real):
    rid = real.submit("-R", "slow.py")
    wait_for(lambda: real.status().get(rid, {}).get("status") == "running", timeout=60)
    real.ok("delete", str(rid))
    assert real.ended(rid)["status"] in ("deleted", "terminated")
    rid = real.submit("-R", "graceful.py")
    wait_for(lambda: real.status().get(rid, {}).get("status") == "running", timeout=60)
    real.ok("delete", "-g", str(rid))
    assert real.ended(rid)["status"] == "completed"
    assert real.dataset("graceful.state") == "stopped"


def test_delete_of_a_rid_not_in_the_schedule_returns_normally(real):
    # ARTIQ ignores RIDs that are not (or no longer) scheduled
    for args in (["delete", "987654"], ["delete", "-g", "987654"]):
        result = real.artiq_client(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)


def test_set_and_del_dataset(real):
    real.ok("set-dataset", "-p", "interop.list", "[1, 2.5, 'x']")
    assert real.dataset("interop.list") == [1, 2.5, "x"]
    real.ok("set-dataset", "--unit", "ms", "--precision", "2", "interop.t", "5")
    assert real.dataset("interop.t") == pytest.approx(0.005)
    with real.client("dataset_db") as datasets:
        assert datasets.get_metadata("interop.t") == {"unit": "ms", "precision": 2}
    real.ok("set-dataset", "-n", "interop.volatile", "{'a': (1, 2)}")
    assert real.dataset("interop.volatile") == {"a": (1, 2)}
    real.ok("del-dataset", "interop.volatile")
    with real.client("dataset_db") as datasets:
        with pytest.raises(Exception):
            datasets.get("interop.volatile")


def test_scan_devices(real):
    real.lab.write("device_db.py", DEVICES.replace('"probe"', '"probe2"'))
    try:
        real.ok("scan-devices")
        with real.client("device_db") as devices:
            assert "probe2" in devices.get_device_db()
    finally:
        real.lab.write("device_db.py", DEVICES)
        real.ok("scan-devices")


def test_scan_repository_sync_async_and_revision(transport, tmp_path):
    lab = make_lab(tmp_path)
    m = start_master(lab, transport)
    try:
        lab.write("repository/extra.py", TWO.replace("two.", "extra.")
                  .replace("class One", "class Extra").replace("class Two", "class Extra2"))
        rev3 = commit_all(lab, "third")
        m.ok("scan-repository")
        with m.client("experiment_db") as db:
            assert "Extra" in db.examine("extra.py")
        follower = m.sync_follower("explist_status")
        m.ok("scan-repository", lab.rev1)
        follower.until(lambda line: lab.rev1 in line)
        m.ok("scan-repository", "HEAD~1")
        follower.until(lambda line: lab.rev2 in line)
        m.ok("scan-repository", "--async")
        follower.until(lambda line: rev3 in line)
        follower.stop()  # a bare socket reader: SIGINT ends it with a KeyboardInterrupt
    finally:
        m.stop()


def test_ls(real):
    top = real.ok("ls").splitlines()
    assert "repository/" in top and "device_db.py" in top
    assert "mark.py" in real.ok("ls", "repository").splitlines()
    outside = real.artiq_client("ls", "/etc")
    assert outside.returncode != 0 and "PermissionError" in outside.stderr


def test_supply_and_cancel_interactive(real):
    rid = real.submit("-R", "ask.py")
    show = real.show("interactive-args")
    show.until(lambda line: str(rid) in line and "Calibration" in line and "gain" in line)
    assert show.stop()[0] == 0
    real.ok("supply-interactive", str(rid), "gain=2.5")
    assert real.ended(rid)["status"] == "completed"
    assert real.dataset("ask.result") == 2.5
    rid = real.submit("-R", "ask.py")
    wait_for(lambda: rid in real.interactive_rids(), timeout=60)
    real.ok("cancel-interactive", str(rid))
    assert real.ended(rid)["status"] == "completed"
    assert real.dataset("ask.result") == "cancelled"


def refused_with(result, exception):
    """artiq_client failed, its last line naming the remote exception (as ARTIQ's)."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(exception + ": "), result.stderr
    return last


def test_supply_and_cancel_interactive_refused_as_by_artiq(real):
    # ARTIQ's master raises ValueError for both: a RID not waiting, keys it did not ask
    rid = real.submit("-R", "ask.py")
    wait_for(lambda: rid in real.interactive_rids(), timeout=60)
    line = refused_with(real.artiq_client("supply-interactive", str(rid), "other=1"),
                        "ValueError")
    assert "other" in line
    assert rid in real.interactive_rids()  # still waiting
    real.ok("cancel-interactive", str(rid))
    assert real.ended(rid)["status"] == "completed"
    for args in (["supply-interactive", str(rid), "gain=1"], ["cancel-interactive", str(rid)],
                 ["cancel-interactive", "987654"]):
        line = refused_with(real.artiq_client(*args), "ValueError")
        assert args[1] in line and "not waiting" in line, line
    assert real.dataset("ask.result") == "cancelled"


def test_show_schedule_datasets_devices(real):
    # (show log and show ccb are not tested: ARTIQ's artiq_client at this revision passes
    # sipyco's Receiver.connect an extra positional argument and fails against any master)
    rid = real.submit("-R", "slow.py")
    try:
        show = real.show("schedule")
        show.until(lambda line: str(rid) in line and "slow.py" in line)
        assert show.stop()[0] == 0
    finally:
        real.ok("delete", str(rid))
    real.ok("set-dataset", "interop.shown", "42")
    show = real.show("datasets")
    show.until(lambda line: "interop.shown" in line and "42" in line)
    assert show.stop()[0] == 0
    show = real.show("devices")
    show.until(lambda line: "| probe |" in line)
    show.until(lambda line: '"class": "getcwd"' in line)
    assert show.stop()[0] == 0


def test_terminate(transport, tmp_path):
    m = start_master(make_lab(tmp_path), transport)
    try:
        assert m.ok("terminate") == ""
        assert m.process.wait(timeout=60) == 0
    finally:
        m.stop()


# --------------------------------------------------------------------------- sipyco's clients

SIPYCO_SCRIPT = r'''
import asyncio, json, sys, time
from sipyco.pc_rpc import Client
from sipyco.sync_struct import Subscriber
from sipyco.broadcast import Receiver
from sipyco.tools import SimpleSSLConfig

control, notify, broadcast = map(int, sys.argv[1:4])
tls = SimpleSSLConfig(*sys.argv[5:8]) if sys.argv[4:5] == ["--ssl"] else None
out = {}

async def main():
    datasets, schedule, seen_rids, logs = {}, {}, set(), []
    def init(target):
        def build(struct):
            target.clear(); target.update(struct); return target
        return build
    ds = Subscriber("datasets", init(datasets))
    sc = Subscriber("schedule", init(schedule),
                    lambda mod: seen_rids.update(schedule))
    log = Receiver("log", [logs.append])
    await ds.connect("127.0.0.1", notify, ssl_config=tls)
    await sc.connect("127.0.0.1", notify, ssl_config=tls)
    await log.connect("127.0.0.1", broadcast, ssl_config=tls)
    mm = Client("127.0.0.1", control, "master_management", ssl_config=tls)
    out["name"] = mm.get_name()
    mm.close_rpc()
    remote = Client("127.0.0.1", control, "schedule", ssl_config=tls)
    expid = {"file": "mark.py", "repo_rev": None, "class_name": None, "log_level": 30,
             "arguments": {"tag": "sipyco"}, "devarg_override": {}}
    rid = remote.submit("main", expid, 0, None, False)
    out["rid"] = rid
    deadline = time.monotonic() + 60
    while not ("mark.sipyco" in datasets and rid in seen_rids and rid not in schedule
               and any("marked sipyco" in r[3] for r in logs)):
        assert time.monotonic() < deadline, (datasets, schedule, logs)
        await asyncio.sleep(0.02)
    remote.close_rpc()
    out["dataset"] = list(datasets["mark.sipyco"])
    out["log"] = [list(r) for r in logs if "marked sipyco" in r[3]][0]
    ddb = Client("127.0.0.1", control, "dataset_db", ssl_config=tls)
    ddb.set("sipyco.t", (1, 2), True, {"unit": "s"})
    out["get"] = list(ddb.get("sipyco.t"))
    out["methods"] = sorted(ddb.get_rpc_method_list()["methods"])
    ddb.close_rpc()
    for c in (ds, sc, log):
        await c.close()

asyncio.run(main())
print(json.dumps(out))
'''


def test_sipyco_rpc_client_subscriber_and_receiver(real, tmp_path):
    script = tmp_path / "sipyco_clients.py"
    script.write_text(SIPYCO_SCRIPT)
    result = subprocess.run(
        [ARTIQ_PYTHON, str(script), str(real.ports["control"]), str(real.ports["notify"]),
         str(real.ports["broadcast"]), *real.transport.client_args()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["name"] is None or isinstance(out["name"], str)
    assert out["dataset"][1] == "v2"  # (persist, value, metadata) with the head revision
    level, source, created, message = out["log"]
    assert level == 30 and str(out["rid"]) in source and message == "mark:marked sipyco"
    assert out["get"] == [1, 2]
    assert out["methods"] == ["delete", "get", "get_metadata", "set", "update"]
    assert real.ended(out["rid"])["status"] == "completed"
    with real.client("dataset_db") as datasets:
        assert datasets.get("sipyco.t") == (1, 2)


# --------------------------------------------------------------------------- the dashboard

# Runs inside the dashboard's own process: it wraps artiq_dashboard.main(), catches the
# objects main() builds, and, once the window shows, drives the real widgets (the
# experiment dock's Submit button, the schedule table's Delete action).
DASHBOARD_DRIVER = r'''
import asyncio, json, sys, time, traceback
from PyQt6 import QtWidgets
from PyQt6.QtTest import QTest
from artiq.frontend import artiq_dashboard
from artiq.dashboard import experiments, interactive_args, schedule
from artiq.gui import entries, log, models

caught = {}
end_screenshot = sys.argv[1]

def catch(cls, name):
    init = cls.__init__
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        caught[name] = self
    cls.__init__ = wrapped

catch(experiments.ExperimentManager, "expmgr")
catch(schedule.ScheduleDock, "schedule")
catch(interactive_args.InteractiveArgsDock, "interactive_args")
subscribers = {}
subscriber_init = models.ModelSubscriber.__init__
def subscriber_kept(self, notifier_name, *args, **kwargs):
    subscriber_init(self, notifier_name, *args, **kwargs)
    subscribers[notifier_name] = self
models.ModelSubscriber.__init__ = subscriber_kept

def store(notifier_name):
    """What the dashboard's model of that notifier holds now."""
    model = subscribers[notifier_name].model
    return {} if model is None else model.backing_store
log_messages = []
append_message = log.LogDockManager.append_message
def append_and_keep(self, msg):
    log_messages.append(msg)
    append_message(self, msg)
log.LogDockManager.append_message = append_and_keep

def report(**fields):
    print("DRIVER " + json.dumps(fields), flush=True)

async def until(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard: {what} not seen within {timeout} s "
                               f"(schedule {caught['expmgr'].schedule}, "
                               f"datasets {sorted(store('datasets'))}, "
                               f"last log messages {[m[3] for m in log_messages[-8:]]})")
        await asyncio.sleep(0.05)

def wait_for_go():
    return asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

def show_docks(main_window):
    """Bring the explorer and schedule tabs to the front, for the screenshots."""
    for dock in main_window.findChildren(QtWidgets.QDockWidget):
        if dock.objectName() in ("Explorer", "Schedule"):
            dock.raise_()

async def drive(main_window):
    try:
        expmgr, dock_schedule = caught["expmgr"], caught["schedule"]
        await until("the explorer listing Slow",
                    lambda: any(v["class_name"] == "Slow" for v in expmgr.explist.values()))
        name = [k for k, v in expmgr.explist.items() if v["class_name"] == "Slow"][0]
        report(event="explorer", names=sorted(expmgr.explist))
        main_window.resize(1280, 900)
        show_docks(main_window)
        await asyncio.sleep(10)  # the dashboard must survive 10 s connected
        report(event="alive")
        await wait_for_go()
        dock = expmgr.open_experiment("repo:" + name)
        submit = [b for b in dock.findChildren(QtWidgets.QPushButton) if b.text() == "Submit"]
        submit[0].click()
        await until("the submitted run in the schedule",
                    lambda: any(v["expid"].get("file") == "slow.py"
                                for v in expmgr.schedule.values()))
        rid = [k for k, v in expmgr.schedule.items() if v["expid"].get("file") == "slow.py"][0]
        await until("the run running", lambda: expmgr.schedule.get(rid, {}).get("status") == "running")
        show_docks(main_window)
        report(event="submitted", rid=rid)
        await wait_for_go()
        table = dock_schedule.table
        table.selectRow(dock_schedule.table_model.row_to_key.index(rid))
        [a for a in table.actions() if a.text() == "Delete"][0].trigger()
        await until("the run leaving the schedule", lambda: rid not in expmgr.schedule)
        report(event="deleted", rid=rid)
        assert main_window.grab().save(end_screenshot)
        report(event="done")
    except Exception:
        report(event="error", text=traceback.format_exc())
    main_window.exit_request.set()

def submit_from_dock(expmgr, class_name):
    name = [k for k, v in expmgr.explist.items() if v["class_name"] == class_name][0]
    dock = expmgr.open_experiment("repo:" + name)
    [b for b in dock.findChildren(QtWidgets.QPushButton) if b.text() == "Submit"][0].click()

def rid_of(expmgr, file):
    rids = [k for k, v in expmgr.schedule.items() if v["expid"].get("file") == file]
    return rids[0] if rids else None

async def live_views(main_window):
    """Log (print lines, multi-line records), datasets and interactive arguments."""
    try:
        expmgr = caught["expmgr"]
        await until("the explorer listing Chatty",
                    lambda: any(v["class_name"] == "Chatty" for v in expmgr.explist.values()))
        submit_from_dock(expmgr, "Chatty")
        await until("Chatty's dataset in the datasets dock",
                    lambda: "chatty.value" in store("datasets"))
        report(event="dataset", value=store("datasets")["chatty.value"][1])
        submit_from_dock(expmgr, "Ask")
        await until("Ask in the schedule", lambda: rid_of(expmgr, "ask.py") is not None)
        rid = rid_of(expmgr, "ask.py")
        await until("Ask's request in the interactive arguments dock",
                    lambda: rid in store("interactive_args"))
        request = store("interactive_args")[rid]
        report(event="interactive", rid=rid, title=request["title"],
               keys=[a[0] for a in request["arglist_desc"]])
        await wait_for_go()
        await until("the request leaving", lambda: rid not in store("interactive_args"))
        report(event="answered", rid=rid)
        messages = lambda: [m[3] for m in log_messages]
        await until("Chatty's print line in the log dock",
                    lambda: "print:a line printed by chatty" in messages(), timeout=20)
        await until("Chatty's multi-line record in the log dock",
                    lambda: any(m.startswith("chatty:first line\nsecond line") for m in messages()), timeout=20)
        report(event="log", sources=sorted({m[1] for m in log_messages}))
        assert main_window.grab().save(end_screenshot)
        report(event="done")
    except Exception:
        report(event="error", text=traceback.format_exc())
    main_window.exit_request.set()

def request_form(rid):
    """The interactive arguments dock's form for run rid (None while it has none)."""
    tabs = caught["interactive_args"].request_view.tabs
    forms = [tabs.widget(i) for i in range(tabs.count())]
    return next((form for form in forms if form.rid == rid), None)

def type_into(widget, text):
    """Replace the widget's text as a person would: select all, then type."""
    widget.setFocus()
    widget.selectAll()
    QTest.keyClicks(widget, text)

async def fill_form(main_window):
    """An interactive arguments request answered by typing into the dock's form."""
    try:
        expmgr = caught["expmgr"]
        await until("the explorer listing Form",
                    lambda: any(v["class_name"] == "Form" for v in expmgr.explist.values()))
        submit_from_dock(expmgr, "Form")
        await until("Form in the schedule", lambda: rid_of(expmgr, "form.py") is not None)
        rid = rid_of(expmgr, "form.py")
        await until("Form's request in the interactive arguments dock",
                    lambda: request_form(rid) is not None)
        # (the schedule comes on another connection: its "running" may arrive later)
        await until("Form running",
                    lambda: expmgr.schedule.get(rid, {}).get("status") == "running")
        caught["interactive_args"].raise_()
        main_window.resize(1280, 900)
        report(event="asked", rid=rid, keys=sorted(request_form(rid).arguments),
               status=expmgr.schedule[rid]["status"])
        await wait_for_go()
        form = request_form(rid)
        type_into(form.findChildren(entries.NumberEntryFloat)[0], "2.5")
        type_into(form.findChildren(entries.StringEntry)[0], "typed in the form")
        report(event="typed", values={k: a["state"] for k, a in form.arguments.items()})
        assert main_window.grab().save(end_screenshot)
        [b for b in form.findChildren(QtWidgets.QPushButton) if b.text() == "Supply"][0].click()
        await until("the request leaving", lambda: rid not in store("interactive_args"))
        await until("Form's result in the datasets dock",
                    lambda: "form.result" in store("datasets"))
        report(event="answered", rid=rid, result=store("datasets")["form.result"][1])
        report(event="done")
    except Exception:
        report(event="error", text=traceback.format_exc())
    main_window.exit_request.set()

scenario = {"submit_delete": drive, "live_views": live_views,
            "fill_form": fill_form}[sys.argv[2]]
show = artiq_dashboard.MainWindow.show
def show_and_drive(self):
    show(self)
    asyncio.ensure_future(scenario(self))
artiq_dashboard.MainWindow.show = show_and_drive

sys.argv = ["artiq_dashboard"] + sys.argv[3:]
artiq_dashboard.main()
'''


class Xvfb:
    """An X server of our own on a free display number."""

    def __init__(self):
        self.process = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0",
                                         "1280x900x24", "-nolisten", "tcp"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        self.display = ":" + self.process.stdout.readline().strip()

    def screenshot(self, path):
        subprocess.run(["import", "-display", self.display, "-window", "root", str(path)],
                       check=True, timeout=60)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process.stdout.close()


class Dashboard:
    """The real dashboard under its own Xvfb, running DASHBOARD_DRIVER's scenario."""

    def __init__(self, real, tmp_path, scenario, tls_args=None):
        tls_args = real.transport.client_args() if tls_args is None else tls_args
        driver = tmp_path / "dashboard_driver.py"
        driver.write_text(DASHBOARD_DRIVER)
        self.xvfb = Xvfb()
        env = {**os.environ, "DISPLAY": self.xvfb.display, "QT_QPA_PLATFORM": "xcb",
               "HOME": str(tmp_path)}  # the dashboard's settings go under HOME
        self.process = subprocess.Popen(
            [ARTIQ_PYTHON, str(driver), str(tmp_path / "dashboard-end.png"), scenario,
             "-s", "127.0.0.1", "--port-control", str(real.ports["control"]),
             "--port-notify", str(real.ports["notify"]),
             "--port-broadcast", str(real.ports["broadcast"]),
             "--db-file", str(tmp_path / "dashboard.pyon"), *tls_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        self.events = []

    def next_event(self):
        """The driver's next report; fails on its error report or on the dashboard's exit."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"dashboard exited ({self.process.wait(timeout=30)}): "
                                     f"{self.process.stderr.read()[-3000:]}; "
                                     f"events {self.events}")
            if line.startswith("DRIVER "):
                event = json.loads(line[len("DRIVER "):])
                self.events.append(event)
                if event["event"] == "error":
                    code, stderr = self.exited()
                    raise AssertionError(f"{event['text']}\ndashboard exit {code}: {stderr}")
                return event

    def go(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def exited(self):
        code = self.process.wait(timeout=60)
        return code, self.process.stderr.read()[-3000:]

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()
        self.xvfb.stop()


needs_xvfb = pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("import") is None,
                                reason="needs Xvfb and ImageMagick's import")


@needs_xvfb
def test_dashboard_starts_lists_submits_and_deletes(real, tmp_path):
    dashboard = Dashboard(real, tmp_path, "submit_delete")
    try:
        explorer = dashboard.next_event()
        assert explorer["event"] == "explorer" and len(explorer["names"]) >= 5
        assert dashboard.next_event()["event"] == "alive"
        assert dashboard.process.poll() is None
        dashboard.xvfb.screenshot(tmp_path / "dashboard-start.png")
        dashboard.go()
        submitted = dashboard.next_event()
        assert submitted["event"] == "submitted"
        rid = submitted["rid"]
        assert real.status()[rid]["status"] == "running"  # labpipe agrees
        dashboard.xvfb.screenshot(tmp_path / "dashboard-running.png")
        dashboard.go()
        assert dashboard.next_event() == {"event": "deleted", "rid": rid}
        assert real.ended(rid)["status"] in ("deleted", "terminated")
        assert dashboard.next_event()["event"] == "done"
        code, stderr = dashboard.exited()
        assert code == 0, stderr
        for shot in ("start", "running", "end"):
            assert (tmp_path / f"dashboard-{shot}.png").stat().st_size > 0
    finally:
        dashboard.close()


CHATTY = """
import logging
from labpipe.experiment import *

class Chatty(EnvExperiment):
    def run(self):
        self.set_dataset("chatty.value", 17, broadcast=True)
        print("a line printed by chatty")
        logging.getLogger("chatty").warning("first line\\nsecond line")
"""


@needs_xvfb
def test_dashboard_shows_datasets_log_and_interactive_args(transport, tmp_path):
    lab = make_lab(tmp_path / "lab")
    lab.write("repository/chatty.py", CHATTY)
    commit_all(lab, "chatty")
    m = start_master(lab, transport)
    dashboard = Dashboard(m, tmp_path, "live_views")
    try:
        assert dashboard.next_event() == {"event": "dataset", "value": 17}
        interactive = dashboard.next_event()
        assert interactive["title"] == "Calibration" and interactive["keys"] == ["gain"]
        m.ok("cancel-interactive", str(interactive["rid"]))
        dashboard.go()
        assert dashboard.next_event() == {"event": "answered", "rid": interactive["rid"]}
        log = dashboard.next_event()
        assert log["event"] == "log" and any("Chatty" in s for s in log["sources"])
        assert dashboard.next_event()["event"] == "done"
        code, stderr = dashboard.exited()
        assert code == 0, stderr
        assert m.ended(interactive["rid"])["status"] == "completed"
    finally:
        dashboard.close()
        m.stop()


@needs_xvfb
def test_dashboard_supplies_interactive_arguments_typed_into_its_form(real, tmp_path):
    dashboard = Dashboard(real, tmp_path, "fill_form")
    try:
        asked = dashboard.next_event()
        assert asked["event"] == "asked" and asked["keys"] == ["gain", "note"], asked
        rid = asked["rid"]
        # the run waits for its arguments: running, asking, not ended, no result yet
        assert asked["status"] == "running" and real.status()[rid]["status"] == "running"
        assert rid in real.interactive_rids()
        with real.client("history") as history:
            with pytest.raises(Exception, match="has not ended yet"):
                history.get(rid)
        with real.client("dataset_db") as datasets:
            with pytest.raises(Exception):
                datasets.get("form.result")
        dashboard.xvfb.screenshot(tmp_path / "dashboard-asked.png")
        dashboard.go()
        typed = dashboard.next_event()
        assert typed == {"event": "typed", "values": {"gain": 2.5, "note": "typed in the form"}}
        answered = dashboard.next_event()
        assert answered == {"event": "answered", "rid": rid,
                            "result": [2.5, "typed in the form"]}
        assert dashboard.next_event()["event"] == "done"
        code, stderr = dashboard.exited()
        assert code == 0, stderr
        assert real.ended(rid)["status"] == "completed"
        assert real.dataset("form.result") == [2.5, "typed in the form"]
        assert rid not in real.interactive_rids()
    finally:
        dashboard.close()


# --------------------------------------------------------------------------- refused over --ssl

@needs_xvfb
def test_dashboard_with_an_untrusted_certificate_gets_nothing(tmp_path):
    transport = make_transport("ssl", tmp_path / "certs")
    m = start_master(make_lab(tmp_path / "lab"), transport)
    dashboard = Dashboard(m, tmp_path, "submit_delete",
                          tls_args=transport.client_args("untrusted"))
    try:
        code, stderr = dashboard.exited()
        assert code != 0, stderr
        # it never got far enough to build its window, let alone show the master's data
        assert "DRIVER " not in dashboard.process.stdout.read()
        wait_for(lambda: m.refusals(), timeout=30)
        m.ok("set-dataset", "tls.after", "1")  # the master kept serving
        assert m.dataset("tls.after") == 1
        refusals = m.refusals()
        assert len(refusals) == 1 and "self-signed certificate" in refusals[0], refusals
        assert m.process.poll() is None
    finally:
        dashboard.close()
        m.stop()


def test_artiq_client_with_an_expired_untrusted_or_no_certificate_is_refused(tmp_path):
    transport = make_transport("ssl", tmp_path / "certs")
    m = start_master(make_lab(tmp_path / "lab"), transport)
    try:
        before = m.submit("-R", "mark.py", "tag='before'")
        assert m.ended(before)["status"] == "completed"
        cases = [("expired", transport.client_args("expired"), "certificate has expired"),
                 ("untrusted", transport.client_args("untrusted"), "self-signed certificate"),
                 ("plain", [], "not TLS")]
        for who, tls_args, reason in cases:
            count = len(m.refusals())
            refused = m.artiq_client("submit", "-R", "mark.py", f"tag='{who}'",
                                     tls_args=tls_args)
            assert refused.returncode != 0, (who, refused.stdout, refused.stderr)
            assert "RID" not in refused.stdout, (who, refused.stdout)
            wait_for(lambda: len(m.refusals()) > count, timeout=30)
            assert m.process.poll() is None
            refusals = m.refusals()
            assert len(refusals) == count + 1 and reason in refusals[-1], (who, refusals)
        # nothing was submitted: no schedule entry, no record, no RID taken
        assert m.status() == {}
        assert m.history_rids() == {before}
        after = m.submit("-R", "mark.py", "tag='after'")
        assert after == before + 1
        assert m.ended(after)["status"] == "completed"
        with m.client("dataset_db") as datasets:
            for who, _, _ in cases:
                with pytest.raises(Exception):
                    datasets.get(f"mark.{who}")
    finally:
        m.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_artiq_client_with_certificates_made_as_the_readme_says(tmp_path):
    """``openssl req -x509 -newkey rsa -keyout N.key -nodes -out N.pem -sha256 -subj /``"""
    from tls_certs import openssl_identity
    made = {name: openssl_identity(str(tmp_path), name) for name in ("master", "client")}
    master, client = ((made["master"].cert, made["master"].key),
                      (made["client"].cert, made["client"].key))
    m = RealMaster(make_lab(tmp_path / "lab"), Transport("plain"),
                   "--ssl", *master, client[0])
    try:
        trusted = ["--ssl", *client, master[0]]
        out = m.artiq_client("submit", "-R", "mark.py", "tag='rsa'", tls_args=trusted)
        assert out.returncode == 0 and out.stdout.startswith("RID: "), out.stderr
        follower = Follower(m.artiq_command("show", "datasets", port=m.ports["notify"],
                                            tls_args=trusted))
        follower.until(lambda line: "mark.rsa" in line, timeout=60)
        assert follower.stop()[0] == 0
    finally:
        m.stop()
