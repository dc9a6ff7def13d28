"""History that tells the truth (issue 17): a run whose ``scheduler.pause()`` returned at
once (nothing of higher priority waiting) was never paused, and stage times are the
times the run really spent in each stage. A real ``labpipe-master`` process, its history
read over RPC and through ``labpipe-client --json``."""

import json
import time

import pytest

from conftest import Lab
from test_door_arguments import MasterProcess

QUICK_PAUSE = """
import os, time

class QuickPause(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))

    def run(self):
        for _ in range(20):
            self.scheduler.pause()  # nothing waits: returns at once
        while not os.path.exists(self.gate):
            time.sleep(0.005)
"""

YIELDING = """
import os, time

class Yielding(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))

    def run(self):
        while not os.path.exists(self.gate):
            time.sleep(0.005)
        while not self.scheduler.check_pause():  # the higher run is prepared
            time.sleep(0.005)
        self.scheduler.pause()
"""

HIGH = """
class High(EnvExperiment):
    def run(self):
        pass
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("pauses"))
    for name, body in (("quick_pause", QUICK_PAUSE), ("yielding", YIELDING),
                       ("high", HIGH)):
        lab.experiment(name, body)
    master = MasterProcess(lab.root)
    yield lab, master
    master.stop()


def expid(file, **arguments):
    return {"file": file, "class_name": None, "arguments": arguments, "log_level": 30,
            "repo_rev": None}


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_pause_that_returns_at_once_is_no_pause(master):
    lab, m = master
    gate = lab.path("quick_gate")
    with m.client("schedule") as schedule:
        rid = schedule.submit("main", expid("quick_pause.py", gate=gate))
        wait_for(lambda: schedule.get_status().get(rid, {}).get("status") == "running")
        open(gate, "w").close()
    with m.client("history") as history:
        record = history.wait(rid, 60)
    assert record["status"] == "completed", record["error"]
    stages = record["stages"]
    assert "paused" not in stages
    running = stages["running"]
    assert running["end"] == stages["run_done"]["start"]
    assert running["spent"] == pytest.approx(running["end"] - running["start"], abs=1e-6)
    # the client shows the same record
    shown = m.cli("--json", "history", str(rid))
    assert shown.returncode == 0, shown.stderr
    assert "paused" not in json.loads(shown.stdout)["stages"]


def test_stage_times_are_the_times_really_spent(master):
    lab, m = master
    gate = lab.path("yield_gate")
    with m.client("schedule") as schedule:
        low = schedule.submit("main", expid("yielding.py", gate=gate))
        wait_for(lambda: schedule.get_status().get(low, {}).get("status") == "running")
        high = schedule.submit("main", expid("high.py"), 10)
        wait_for(lambda: schedule.get_status().get(high, {}).get("status")
                 == "prepare_done")
        open(gate, "w").close()
    with m.client("history") as history:
        low_record = history.wait(low, 60)
        high_record = history.wait(high, 60)
    assert low_record["status"] == high_record["status"] == "completed"
    stages = low_record["stages"]
    running, paused = stages["running"], stages["paused"]
    # running, paused, running again: the paused time is not running time
    assert running["start"] < paused["start"] < paused["end"] < running["end"]
    assert running["end"] == stages["run_done"]["start"]
    whole = running["end"] - running["start"]
    assert running["spent"] + paused["spent"] == pytest.approx(whole, abs=1e-6)
    assert running["spent"] < whole
    # the higher run ran entirely while the lower one was paused
    high_running = high_record["stages"]["running"]
    assert paused["start"] <= high_running["start"] <= high_running["end"] <= paused["end"]
    assert paused["spent"] >= high_running["spent"]
    for stage in stages.values():
        assert 0 <= stage["spent"] <= stage["end"] - stage["start"] + 1e-6


def test_stage_clock_adds_up_the_visits_of_a_stage():
    from labpipe.master.stage_clock import StageClock
    clock = StageClock()
    assert not clock.visited and clock.summary(5.0) == {}
    for stage, at in (("preparing", 1.0), ("running", 2.0), ("running", 2.5),
                      ("paused", 3.0), ("running", 7.0), ("run_done", 8.0)):
        clock.enter(stage, at)
    assert clock.summary(9.0) == {
        "preparing": {"start": 1.0, "end": 2.0, "spent": 1.0},
        "running": {"start": 2.0, "end": 8.0, "spent": 2.0},
        "paused": {"start": 3.0, "end": 7.0, "spent": 4.0},
        "run_done": {"start": 8.0, "end": 9.0, "spent": 1.0}}
