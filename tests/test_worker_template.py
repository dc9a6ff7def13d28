"""The worker template holds every module a run needs.

A module first imported inside a worker is imported again in every run (each run is a
fresh process forked from the template), which costs milliseconds per run: a lazy import
of ``labpipe.protocol.rpc`` when closing devices once cost a third of a trivial run.
The first test runs the worker's real entry point, ``child.main``, in a process forked
from one that imported only the preload list, drives a whole trivial run through it
with the master's messages (``labpipe.worker.messages``), and asserts that the worker
imported nothing new.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

TRIVIAL = """
import logging
from labpipe.experiment import *

class Trivial(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, step=1, precision=0, type="int"))
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("x", [self.n], broadcast=True)
        print("ran with", self.n)
        self.scheduler.check_pause()

    def analyze(self):
        self.append_to_dataset("x", 2)
        logging.getLogger("trivial").info("analyzed")
"""

# Runs in a fresh interpreter: import the preload list like the template does, then fork
# a worker running child.main and play the master's part over the pipe. The worker
# reports every module it imports (the "import" audit event) on a pipe of its own.
PROBE = """
import importlib, json, logging, os, sys
from labpipe.worker import launcher
for name in launcher.preload(bluesky=False):
    importlib.import_module(name)

from multiprocessing import Pipe
from labpipe.worker import child, messages
from labpipe.worker.output import receive_output_fd

master_end, worker_end = Pipe()
imports_r, imports_w = os.pipe()
pid = os.fork()
if pid == 0:  # the worker
    master_end.close()
    os.close(imports_r)
    preloaded = set(sys.modules)

    def note_import(event, args):
        if event == "import" and args[0] not in preloaded:
            os.write(imports_w, args[0].encode() + b"\\n")

    sys.addaudithook(note_import)
    child.main(worker_end)
    os._exit(3)  # not reached: the worker exits on Terminate
worker_end.close()
os.close(imports_w)
output = receive_output_fd(master_end)  # the worker's fds 1/2, sent first
messages_seen = []


def answer(request):
    if isinstance(request, messages.GetDeviceDB):
        return messages.Reply({})
    if isinstance(request, messages.CheckPause):
        return messages.Reply(False)
    return messages.Refused(f"the probe does not answer {messages.tag_of(request)}")


def stage(command, expected):
    master_end.send(messages.encode(command))
    while True:
        for wire in master_end.recv():
            msg = messages.decode(wire, messages.FROM_WORKER)
            messages_seen.append(messages.tag_of(msg))
            if isinstance(msg, messages.Request):
                master_end.send(messages.encode(answer(msg)))
            elif isinstance(msg, messages.Outcome):
                assert isinstance(msg, expected), msg
                return msg


expid = {"file": sys.argv[1], "class_name": None, "arguments": {"n": 3},
         "log_level": logging.INFO}
built = stage(messages.Build(1, "main", 0, expid, None, os.getcwd(), sys.argv[2]),
              messages.Built)
stage(messages.Prepare(), messages.Completed)
stage(messages.Run(), messages.Completed)
analyzed = stage(messages.Analyze(), messages.Completed)
master_end.send(messages.encode(messages.Terminate()))
_, status = os.waitpid(pid, 0)
with os.fdopen(imports_r, "rb") as f:
    imported = f.read().decode().split()
os.close(output)
new = sorted({name for name in imported if not name.startswith("file_import_")})
print(json.dumps({"new": new, "class_name": built.class_name,
                  "results": analyzed.results, "exit": os.waitstatus_to_exitcode(status),
                  "messages": sorted(set(messages_seen))}))
"""


def test_a_trivial_run_imports_nothing_beyond_the_template(tmp_path):
    experiment = tmp_path / "trivial.py"
    experiment.write_text(TRIVIAL)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(experiment),
         str(tmp_path / "results")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["new"] == []
    assert report["exit"] == 0  # it exited on Terminate
    assert report["class_name"] == "Trivial"
    # the run went through the worker's logging, print, dataset and request paths
    assert {"log", "update_dataset", "check_pause"} <= set(report["messages"])
    [results] = list((tmp_path / "results").rglob("*-Trivial.h5"))
    assert report["results"] == str(results)


# --- bluesky and ophyd: preloaded once the lab uses them -------------------------------

IMPORTS_BLUESKY = """
import os
import bluesky
from labpipe.experiment import *

class UsesBluesky(EnvExperiment):
    def run(self):
        self.set_dataset("template_pid", os.getppid())
"""


def _template_commands(master_pid):
    """{pid: command line} of the master's template processes (its children running
    the fork server; the processes they fork show the same command line)."""
    commands = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == master_pid and "labpipe.worker.forkserver" in argv:
            commands[int(entry)] = argv
    return commands


def _template_pid_of_a_run(lab, master, schedule, expid):
    """Run expid to completion; the pid of the template its worker was forked from."""
    import h5py
    rid = schedule.submit("main", expid, 0, None, False)
    with master.client("history") as history:
        assert history.wait(rid, 60)["status"] == "completed"
    [path] = (tmp for tmp in (os.path.join(d, f) for d, _, files in
                              os.walk(lab.path("results")) for f in files)
              if os.path.basename(tmp).startswith(f"{rid:09d}-"))
    with h5py.File(path, "r") as f:
        return int(f["datasets/template_pid"][()])


def test_bluesky_is_preloaded_once_a_run_imports_it(lab):
    from test_master_process import MasterProcess, wait_for
    lab.write("repository/uses_bluesky.py", IMPORTS_BLUESKY)
    master = MasterProcess(lab.root)
    try:
        [(lean_pid, lean_argv)] = _template_commands(master.process.pid).items()
        assert "bluesky" not in lean_argv  # a lab that does not use bluesky (yet)
        expid = {"file": "repository/uses_bluesky.py", "class_name": None,
                 "arguments": {}, "log_level": 30}
        with master.client("schedule") as schedule:
            assert _template_pid_of_a_run(lab, master, schedule, expid) == lean_pid
            wait_for(lambda: any("bluesky" in argv for argv in
                                 _template_commands(master.process.pid).values()),
                     timeout=60)
            [bluesky_pid] = [pid for pid, argv in
                             _template_commands(master.process.pid).items()
                             if "bluesky" in argv]
            # runs go on meanwhile; once the new template is ready (it imports bluesky
            # first), they come from it, and stay there
            deadline = time.monotonic() + 60
            while _template_pid_of_a_run(lab, master, schedule, expid) != bluesky_pid:
                assert time.monotonic() < deadline, "runs never came from the new template"
            assert _template_pid_of_a_run(lab, master, schedule, expid) == bluesky_pid
    finally:
        master.stop()


def test_a_device_db_with_ophyd_devices_starts_with_bluesky_preloaded(lab):
    from test_master_process import MasterProcess
    lab.write("device_db.py", """
        device_db = {"det": {"type": "local", "module": "ophyd.sim", "class": "SynGauss",
                             "arguments": {"motor": None, "motor_field": "x",
                                           "center": 0, "Imax": 1}}}
    """)
    master = MasterProcess(lab.root)
    try:
        [argv] = _template_commands(master.process.pid).values()
        assert "bluesky" in argv
    finally:
        master.stop()
