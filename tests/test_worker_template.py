"""The worker template holds every module a run needs.

A module first imported inside a worker is imported again in every run (each run is a
fresh process forked from the template), which costs milliseconds per run: a lazy import
of ``labpipe.protocol.rpc`` when closing devices once cost a third of a trivial run.
These tests do a whole trivial run in a process that imported only the preload list and
assert that nothing new was imported.
"""

import json
import subprocess
import sys
import textwrap

TRIVIAL = """
from labpipe.experiment import *

class Trivial(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, type="int"))
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
for name in launcher.PRELOAD:
    if launcher._importable(name):
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
