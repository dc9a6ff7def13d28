"""The worker template holds every module a run needs.

A module first imported inside a worker is imported again in every run (each run is a
fresh process forked from the template), which costs milliseconds per run: a lazy import
of ``labpipe.protocol.rpc`` when closing devices once cost a third of a trivial run.
These tests do a whole trivial run in a process that imported only the preload list and
assert that nothing new was imported.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

TRIVIAL = """
from labpipe.experiment import *

class Trivial(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, step=1, precision=0, type="int"))
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("x", [self.n], broadcast=True)

    def analyze(self):
        self.append_to_dataset("x", 2)
"""

# Runs in a fresh interpreter: import the preload list like the template does, then do
# a run the way the worker does (child.py's managers, the runner, results, close).
PROBE = """
import importlib, json, logging, sys
from labpipe.worker import launcher
for name in launcher.preload(bluesky=False):
    importlib.import_module(name)
preloaded = set(sys.modules)

from labpipe.worker import child
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.devices import DeviceManager, StaticDeviceDB
from labpipe.worker.runner import ExperimentRunner
from labpipe.worker.virtual_devices import CCB, Scheduler

class Channel:
    def send(self, msg):
        pass

    def request(self, action, **kwargs):
        return None

channel = Channel()
expid = {"file": sys.argv[1], "class_name": None, "arguments": {"n": 3},
         "log_level": logging.INFO}
logging.getLogger().addHandler(child._PipeLogHandler(channel, []))
devices = DeviceManager(StaticDeviceDB({}), {
    "scheduler": Scheduler(channel, 1, "main", 0, expid), "ccb": CCB(channel)})
datasets = DatasetManager(lambda mod: None, lambda key: None)
arguments = child._WorkerArgumentManager(expid["arguments"], channel)
runner = ExperimentRunner(rid=1, expid=expid, managers=(devices, datasets, arguments),
                          results_dir=sys.argv[2])
runner.build()
runner.prepare()
runner.run()
runner.analyze()
runner.write_results()
runner.close()
logging.getLogger("labpipe.worker").info("done")
new = sorted(name for name in set(sys.modules) - preloaded
             if not name.startswith("file_import_"))
print(json.dumps(new))
"""


def test_a_trivial_run_imports_nothing_beyond_the_template(tmp_path):
    experiment = tmp_path / "trivial.py"
    experiment.write_text(TRIVIAL)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(experiment),
         str(tmp_path / "results")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert list((tmp_path / "results").rglob("*-Trivial.h5"))


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
