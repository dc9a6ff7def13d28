"""No process outlives its master; one master per lab (real master processes)."""

import os
import signal
import subprocess
import sys

import pytest

from labpipe.master.process_records import FILE_NAME
from labpipe.protocol import pyon
from labpipe.worker import lifetime
from conftest import MasterProcess, descendants, wait_for, wait_gone

SLEEPER = """
import time

class Sleeper(EnvExperiment):
    def run(self):
        self.set_dataset("sleeper.up", 1, broadcast=True)
        time.sleep(60)
"""

SPAWNER = """
import subprocess, time

class Spawner(EnvExperiment):
    def run(self):
        child = subprocess.Popen(["sleep", "60"])
        self.set_dataset("spawner.child", child.pid, broadcast=True)
        time.sleep(60)
"""

QUICK = """
class Quick(EnvExperiment):
    def run(self):
        self.set_dataset("quick.done", 1, broadcast=True)
"""


@pytest.fixture
def lab_with_experiments(lab):
    lab.experiment("sleeper", SLEEPER)
    lab.experiment("spawner", SPAWNER)
    lab.experiment("quick", QUICK)
    return lab


def test_sigkill_of_the_master_ends_every_process_it_started(lab_with_experiments):
    lab = lab_with_experiments
    m = MasterProcess(lab.root)
    try:
        sleeper = m.submit("-p", "one", "repository/sleeper.py")
        spawner = m.submit("-p", "two", "repository/spawner.py")
        with m.client("schedule") as schedule:
            wait_for(lambda: all(schedule.get_status().get(rid, {}).get("status")
                                 == "running" for rid in (sleeper, spawner)))
        with m.client("dataset_db") as datasets:
            wait_for(lambda: _has(datasets, "spawner.child"))
            child = datasets.get("spawner.child")
        processes = descendants(m.process.pid)
        assert child in processes  # the experiment's own child, below its worker
        assert len(processes) >= 4  # template, two workers, the sleep (spares, examiners)
        m.process.kill()
        m.process.wait(timeout=10)
        assert wait_gone(processes, 1.0) == []
    finally:
        m.stop()
    # a new master in the same lab starts cleanly and runs experiments
    again = MasterProcess(lab.root)
    try:
        rid = again.submit("repository/quick.py")
        with again.client("schedule") as schedule:
            wait_for(lambda: rid not in schedule.get_status())
        with again.client("dataset_db") as datasets:
            assert datasets.get("quick.done") == 1
    finally:
        again.stop()


def _has(datasets, key):
    try:
        datasets.get(key)
        return True
    except Exception:
        return False


def test_a_run_ending_ends_what_its_experiment_left_running(lab):
    lab.experiment("leaver", """
        import subprocess

        class Leaver(EnvExperiment):
            def run(self):
                child = subprocess.Popen(["sleep", "60"])
                self.set_dataset("leaver.child", child.pid, broadcast=True)
        """)
    m = MasterProcess(lab.root)
    try:
        rid = m.submit("repository/leaver.py")
        with m.client("schedule") as schedule:
            wait_for(lambda: rid not in schedule.get_status())
        with m.client("dataset_db") as datasets:
            child = datasets.get("leaver.child")
        assert wait_gone([child], 10) == []
    finally:
        m.stop()


def test_a_group_left_by_a_previous_master_is_ended_at_start(lab):
    # a process that left its group (setsid), so that neither PDEATHSIG nor its
    # template could end it, recorded by a previous master
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                start_new_session=True)
    try:
        wait_for(lambda: lifetime.start_time(leftover.pid) is not None)
        start = lifetime.start_time(leftover.pid)
        # a record whose pid is recycled (another start time) must be left alone
        bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
        pyon.store_file(lab.path(FILE_NAME), [
            {"pgid": leftover.pid, "start": start},
            {"pgid": bystander.pid, "start": lifetime.start_time(bystander.pid) - 1}])
        m = MasterProcess(lab.root)  # ready: the leftover was ended before
        try:
            assert leftover.wait(timeout=10) == -signal.SIGTERM
            assert bystander.poll() is None
            m.process.send_signal(signal.SIGTERM)
            m.process.wait(timeout=30)
            err = m.stderr.text(wait=10)
        finally:
            m.stop()
        ended = [line for line in err.splitlines() if "ended process group" in line]
        assert len(ended) == 1 and f"group {leftover.pid} " in ended[0], err
    finally:
        for p in (leftover, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_second_master_in_the_same_lab_exits_naming_the_first(lab_with_experiments):
    lab = lab_with_experiments
    first = MasterProcess(lab.root)
    try:
        rid = first.submit("repository/sleeper.py")
        with first.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["status"] == "running")
        before = {name: _stat(lab.path(name)) for name in
                  ("schedule.mdb", "last_rid.pyon", "history.mdb")}
        for bind in ("127.0.0.1", "::1"):
            second = subprocess.run(
                [sys.executable, "-m", "labpipe.master", "--bind", bind,
                 "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
                 "--port-broadcast", "0"],
                cwd=lab.root, capture_output=True, text=True, timeout=60)
            assert second.returncode == 1
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"PID {first.process.pid}" in lines[0]
            assert f"control {first.ports['control']}" in lines[0]
            assert "ready" not in second.stdout
        assert {name: _stat(lab.path(name)) for name in before} == before
        with first.client("schedule") as schedule:
            assert schedule.get_status()[rid]["status"] == "running"
    finally:
        first.stop()


def _stat(path):
    """Size and modification time of a file, or of every file in a folder."""
    if os.path.isdir(path):
        return sorted((name, _stat(os.path.join(path, name))) for name in os.listdir(path))
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
