"""labpipe-run: one experiment in-process, no master."""

import asyncio
import contextlib
import ctypes
import hashlib
import os
import signal
import subprocess
import sys

import h5py

from labpipe.master.datasets import DatasetDB
from labpipe.protocol.rpc import Client

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


GAIN = """
class Gain(EnvExperiment):
    def run(self):
        print("gain", self.get_dataset("gain"))
"""


def labpipe_run(lab, *args, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "labpipe.client.run", *args],
                          cwd=lab.root, capture_output=True, text=True, timeout=60,
                          preexec_fn=preexec_fn)


@contextlib.contextmanager
def master_process(lab):
    """labpipe-master serving the lab (every port picked free); yields a dataset_db
    client."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
         "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
         "--port-broadcast", "0"],
        cwd=lab.root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert "ready" in line, line
        control = int(line.split("control ")[1].split(",")[0])
        with Client("127.0.0.1", control, "dataset_db", timeout=20) as client:
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def fingerprint(path):
    """What a write would change: modification time, size and contents."""
    stat = os.stat(path)
    with open(path, "rb") as f:
        return stat.st_mtime_ns, stat.st_size, hashlib.sha256(f.read()).hexdigest()


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


def test_ctrl_c_reaches_the_main_thread_whatever_threads_the_imports_started(lab):
    """The kernel hands a process's SIGINT to any thread that does not block it; if it
    is one of numpy's OpenBLAS threads, the main thread's sleep is not interrupted
    (the test above then hung once in 60 tries under load)."""
    lab.experiment("threads", """
import os

class Threads(EnvExperiment):
    def run(self):
        main = os.getpid()
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/status") as status:
                blocked = next(int(line.split()[1], 16) for line in status
                               if line.startswith("SigBlk:"))
            print(task, "main" if int(task) == main else "other", blocked)
""")
    result = labpipe_run(lab, "repository/threads.py")
    assert result.returncode == 0, result.stderr
    threads = [line.split() for line in result.stdout.splitlines()]
    sigint, sigterm = 1 << (signal.SIGINT - 1), 1 << (signal.SIGTERM - 1)
    assert any(kind == "other" for _, kind, _ in threads)  # numpy's, at least
    for _, kind, blocked in threads:
        mask = int(blocked)
        assert bool(mask & sigint) == bool(mask & sigterm) == (kind == "other")


def test_reads_a_running_masters_datasets_and_leaves_the_file_as_it_was(lab):
    lab.experiment("gain", GAIN)
    with master_process(lab) as datasets:
        datasets.set("gain", 2.5, True)
        before = fingerprint(lab.path("dataset_db.mdb"))
        result = labpipe_run(lab, "repository/gain.py")
        assert result.returncode == 0, result.stderr
        assert "gain 2.5" in result.stdout
        assert fingerprint(lab.path("dataset_db.mdb")) == before
        datasets.set("gain", 3.5, True)  # the master still writes its database
        result = labpipe_run(lab, "repository/gain.py")
        assert result.returncode == 0, result.stderr
        assert "gain 3.5" in result.stdout
        assert datasets.get("gain") == 3.5


def _without_root_file_access():
    """In the child, before exec: a root process loses its power to write files it may
    not write (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH out of the bounding set)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_reads_a_dataset_database_it_may_not_write(lab):
    lab.experiment("gain", GAIN)
    path = lab.path("dataset_db.mdb")
    db = DatasetDB(path)
    asyncio.run(db.set("gain", 2.5, persist=True))
    db.close()
    os.chmod(path, 0o444)
    probe = subprocess.run([sys.executable, "-c", f"open({path!r}, 'r+b')"],
                           capture_output=True, text=True,
                           preexec_fn=_without_root_file_access)
    assert "PermissionError" in probe.stderr, "the file is still writable"
    before = fingerprint(path)
    result = labpipe_run(lab, "repository/gain.py", preexec_fn=_without_root_file_access)
    assert result.returncode == 0, result.stderr
    assert "gain 2.5" in result.stdout
    assert fingerprint(path) == before


def test_a_missing_or_broken_dataset_database_is_one_line(lab):
    lab.experiment("gain", GAIN)
    result = labpipe_run(lab, "repository/gain.py")
    assert result.returncode == 1
    assert result.stderr.strip() == \
        ("labpipe-run: DatasetNotFoundError: dataset 'gain' does not exist (no dataset "
         "database dataset_db.mdb)")
    lab.write("dataset_db.mdb", "not a database\n" * 1000)
    result = labpipe_run(lab, "repository/gain.py")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("labpipe-run: RuntimeError: cannot read the dataset "
                               "database dataset_db.mdb: ")
    assert lines[0].count("dataset_db.mdb") == 1
