"""labpipe-run: one experiment in-process, no master."""

import signal
import subprocess
import sys

import h5py

EXP = """
from labpipe.experiment import *

class Square(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("x", NumberValue(2, step=1, precision=0, type="int", max=100))

    def run(self):
        assert not self.scheduler.check_pause()
        self.set_dataset("square", self.x ** 2)
        print("squared", self.x)
"""


def labpipe_run(lab, *args):
    return subprocess.run([sys.executable, "-m", "labpipe.client.run", *args],
                          cwd=lab.root, capture_output=True, text=True, timeout=60)


def test_runs_with_arguments_and_writes_results(lab):
    lab.experiment("square", EXP)
    result = labpipe_run(lab, "repository/square.py", "x=7", "-o", "out.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(lab.path("out.h5")) as f:
        assert f["datasets/square"][()] == 49
        assert f["rid"][()] == 0


def test_errors_are_one_line_with_exit_code(lab):
    lab.experiment("square", EXP)
    for args, word in [(["repository/square.py", "x=500"], "'x'"),
                       (["repository/missing.py"], "missing.py"),
                       (["repository/square.py", "-c", "Nope"], "Nope")]:
        result = labpipe_run(lab, *args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in result.stderr


def test_ctrl_c_is_one_line_and_exit_code_130(lab):
    lab.experiment("slow", """
import time

class Slow(EnvExperiment):
    def run(self):
        print("started", flush=True)
        time.sleep(60)
""")
    process = subprocess.Popen([sys.executable, "-m", "labpipe.client.run", "-v",
                                "repository/slow.py"], cwd=lab.root, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "labpipe-run: interrupted"
    assert "Traceback" not in stderr
