"""A real master and a real labpipe-web beside it, for the web dashboard's tests."""

import subprocess
import sys

import pytest

from conftest import ASK, MasterProcess, StreamReader, terminate

#: Scans a frequency, sets a growing 1-D array (broadcast) point by point and waits
#: for the file named by ``gate`` between points (at once without a gate).
SCANNER = """
import os, time
import numpy as np
from labpipe.experiment import *

class Scanner(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("freqs", Scannable(default=RangeScan(1*MHz, 3*MHz, 3),
                                                 unit="MHz"))
        self.setattr_argument("amplitude", NumberValue(0.5, min=0, max=1, step=0.1))
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "fast"))

    def run(self):
        points = list(self.freqs)
        self.set_dataset("scan.freqs", np.array(points), broadcast=True, archive=True)
        self.set_dataset("scan.y", np.zeros(0), broadcast=True, archive=True)
        for i, f in enumerate(points):
            while self.gate and not os.path.exists(self.gate + str(i)):
                time.sleep(0.01)
            self.set_dataset("scan.y", np.arange(i + 1) * self.amplitude,
                             broadcast=True, archive=True)
            self.scheduler.set_progress(i + 1, len(points))
"""



class WebProcess:
    """labpipe-web for a MasterProcess, on a free port of 127.0.0.1."""

    def __init__(self, master: MasterProcess, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.web", "--bind", "127.0.0.1", "--web-port", "0",
             "--port", str(master.ports["control"]),
             "--port-notify", str(master.ports["notify"]),
             "--port-broadcast", str(master.ports["broadcast"]), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = StreamReader(self.process.stderr, f"web-{self.process.pid}-stderr")
        line = self.process.stdout.readline()
        if "ready" not in line:
            terminate(self.process)
            raise AssertionError(f"labpipe-web did not start: {line!r} {self.stderr.text(5)}")
        self.url = line.split("ready: ", 1)[1].strip()

    def stop(self) -> None:
        terminate(self.process)
        self.process.stdout.close()


@pytest.fixture
def web_lab(lab):
    lab.write("repository/scanner.py", SCANNER)
    lab.write("repository/ask.py", ASK)
    lab.write("repository/sub/ask2.py", ASK)
    return lab


@pytest.fixture
def master(web_lab):
    m = MasterProcess(web_lab.root)
    m.lab = web_lab
    yield m
    m.stop()


@pytest.fixture
def web(master):
    w = WebProcess(master)
    yield w
    w.stop()
