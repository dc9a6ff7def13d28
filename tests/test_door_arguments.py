"""Everything a submission says is checked when it is said (issue 17): argument names,
values in their declared units, scans within their range, plan arguments naming devices,
the class of submitted content; at submit, ``change``, ``resubmit`` and
``supply-interactive``. A real ``labpipe-master`` process (real TCP, real workers, real
repository files), driven over RPC and through ``labpipe-client``; a refusal changes
nothing (no RID taken, a pending run as it was, on disk too)."""

import json
import math
import struct
import subprocess
import time

import lmdb
import pytest

import conftest
from conftest import Lab
from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client

DEVICE_DB = """
device_db = {
    "det": {"type": "local", "module": "lab_devices", "class": "Detector"},
    "motor": {"type": "local", "module": "lab_devices", "class": "Motor"},
}
"""

DOOR = """
class Door(EnvExperiment):
    def build(self):
        self.setattr_argument("points", NumberValue(10, min=1, max=1000, precision=0,
                                                    step=1, type="int"))
        self.setattr_argument("freq", NumberValue(5*MHz, unit="MHz", min=1*MHz,
                                                  max=10*MHz))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "fast"))
        self.setattr_argument("flag", BooleanValue(False))
        self.setattr_argument("sweep", Scannable(RangeScan(1*MHz, 2*MHz, 3), unit="MHz",
                                                 global_min=1*MHz, global_max=10*MHz))
        self.setattr_argument("note", StringValue(""))

    def run(self):
        self.set_dataset("door.points", self.points, broadcast=True)
"""

TWO = """
class First(EnvExperiment):
    def run(self):
        pass

class Second(EnvExperiment):
    def run(self):
        pass
"""

PLANS = """
from labpipe.bluesky.plans import plan_experiment

@plan_experiment
def sweep(detectors, motor, num: int = 3):
    "Sweep a motor"
    yield from []
"""

ASK = """
class Ask(EnvExperiment):
    def run(self):
        with self.interactive("Calibration") as ia:
            ia.setattr_argument("gain", NumberValue(1.0, unit="V", min=0.0, max=10.0))
            ia.setattr_argument("note", StringValue("none"))
        self.set_dataset("ask.result", (ia.gain, ia.note), broadcast=True)
"""

SCRIPT = """
print("a plain script")
"""


class MasterProcess(conftest.MasterProcess):
    """conftest's master; its client commands run in the lab folder and keep their exit
    code (refusals are what these tests look at)."""

    def __init__(self, lab_dir):
        super().__init__(lab_dir)
        self.lab_dir = lab_dir

    def client(self, target):
        return Client("127.0.0.1", self.ports["control"], target, timeout=60)

    def cli(self, *args, check=False):
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=120, cwd=self.lab_dir, check=check)


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("door"))
    lab.write("device_db.py", DEVICE_DB)
    for name, body in (("door", DOOR), ("two", TWO), ("ask", ASK)):
        lab.experiment(name, body)
    lab.write("repository/plans.py", PLANS)
    lab.write("repository/tool.py", SCRIPT)
    master = MasterProcess(lab.root)
    yield lab, master
    master.stop()


def expid(file, class_name=None, **arguments):
    return {"file": file, "class_name": class_name, "arguments": arguments,
            "log_level": 30, "repo_rev": None}


def content_expid(source, class_name=None, **arguments):
    return {"content": source, "class_name": class_name, "arguments": arguments,
            "log_level": 30}


def refused_line(result):
    """The client was refused by the master: exit code 3, one line on stderr."""
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("labpipe-client: refused: "), lines[0]
    return lines[0]


def pending_forever(schedule, **arguments):
    """Submit a Door run that stays pending (due in a day); its RID."""
    return schedule.submit("main", expid("door.py", **arguments), 0, time.time() + 86400)


def stored_record(lab, rid):
    """The run's record in schedule.mdb, read from the file itself."""
    env = lmdb.open(lab.path("schedule.mdb"), subdir=False, readonly=True)
    try:
        with env.begin() as txn:
            data = txn.get(struct.pack(">Q", rid))
    finally:
        env.close()
    return None if data is None else pyon.decode(bytes(data).decode("utf-8"))


SCAN_OUT_OF_RANGE = {"ty": "RangeScan", "start": 1e6, "stop": 12e6, "npoints": 5,
                     "randomize": False, "seed": None}

#: (file, class_name, arguments, the refusal's words)
SUBMIT_REFUSALS = [
    ("door.py", None, {"points": 5000}, "door.py: points: 5000 is above the maximum 1000"),
    ("door.py", None, {"points": 0}, "points: 0 is below the minimum 1"),
    ("door.py", None, {"freq": 12e6}, "freq: 12 MHz is above the maximum 10 MHz"),
    ("door.py", None, {"freq": 2.5e5}, "freq: 0.25 MHz is below the minimum 1 MHz"),
    ("door.py", None, {"nosuch": 1, "points": 5},
     "nosuch: not an argument of Door (its arguments: flag, freq, mode, note, points, "
     "sweep)"),
    ("door.py", None, {"mode": "medium"},
     "mode: 'medium' is not one of the choices 'fast', 'slow'"),
    ("door.py", None, {"flag": "True"}, "flag: expected True or False, got 'True' (str)"),
    ("door.py", None, {"sweep": SCAN_OUT_OF_RANGE},
     "sweep: 12 MHz is above the global maximum 10 MHz"),
    ("door.py", None, {"sweep": {"ty": "CenterScan", "center": 9e6, "span": 4e6,
                                 "step": 1e6, "randomize": False, "seed": None}},
     "sweep: 11 MHz is above the global maximum 10 MHz"),
    ("door.py", None, {"sweep": {"ty": "ExplicitScan", "sequence": [2e6, 5e5]}},
     "sweep: 0.5 MHz is below the global minimum 1 MHz"),
    # refused without making its points (a list of 10**12 floats)
    ("door.py", None, {"sweep": dict(SCAN_OUT_OF_RANGE, npoints=10**12)},
     "sweep: 12 MHz is above the global maximum 10 MHz"),
    ("door.py", None, {"sweep": {"ty": "NoScan", "value": 2e7, "repetitions": 10**12}},
     "sweep: 20 MHz is above the global maximum 10 MHz"),
    ("door.py", None, {"sweep": {"ty": "Spiral"}}, "sweep: unknown scan type 'Spiral'"),
    ("plans.py", "sweep", {"detectors": ["det", "dett"], "motor": "motor"},
     "detectors: no device 'dett' in the device database (device_db.py has: det, motor)"),
    ("plans.py", "sweep", {"detectors": '["det", "camera"]', "motor": "motor"},
     "detectors: no device 'camera' in the device database"),
    ("plans.py", "sweep", {"detectors": ["det"], "motor": "stage"},
     "motor: no device 'stage' in the device database"),
    ("tool.py", None, {"points": 5}, "tool.py is a plain script, which takes no arguments"),
]


@pytest.mark.parametrize("file, class_name, arguments, words", SUBMIT_REFUSALS,
                         ids=[f"{i}-{f}-{'-'.join(a)}"
                              for i, (f, _, a, _) in enumerate(SUBMIT_REFUSALS)])
def test_submit_refuses_names_values_scans_and_devices_over_rpc(door, file, class_name,
                                                                arguments, words):
    lab, master = door
    with master.client("schedule") as schedule:
        before = pending_forever(schedule)
        status = schedule.get_status()
        try:
            rid = schedule.submit("main", expid(file, class_name, **arguments), 0,
                                  time.time() + 86400)
        except ValueError as refused:
            message = str(refused)
        else:
            schedule.delete(rid)
            raise AssertionError(f"{arguments} was accepted (RID {rid})")
        assert words in message and "\n" not in message, message
        assert schedule.get_status() == status
        # the refusal took no RID
        after = pending_forever(schedule)
        assert after == before + 1
        schedule.delete(before)
        schedule.delete(after)


def test_content_is_examined_at_submit(door):
    lab, master = door
    with open(lab.path("repository/two.py")) as f:
        two = f.read()
    with open(lab.path("repository/door.py")) as f:
        door_source = f.read()
    with master.client("schedule") as schedule:
        before = pending_forever(schedule)
        with pytest.raises(ValueError, match=r"the submitted content holds several "
                                             r"experiments \(First, Second\): give the "
                                             r"class name"):
            schedule.submit("main", content_expid(two))
        with pytest.raises(ValueError, match="the submitted content has no experiment "
                                             "class 'Third'"):
            schedule.submit("main", content_expid(two, "Third"))
        with pytest.raises(ValueError, match="the submitted content: points: 5000 is "
                                             "above the maximum 1000"):
            schedule.submit("main", content_expid(door_source, points=5000))
        with pytest.raises(ValueError, match="the submitted content: freq: 12 MHz is above"):
            schedule.submit("main", content_expid(door_source, "Door", freq=12e6))
        # what is right is accepted, and the refusals took no RID
        rid = schedule.submit("main", content_expid(two, "Second"), 0,
                              time.time() + 86400)
        assert rid == before + 1
        assert schedule.submit("main", content_expid(door_source, points=7), 0,
                               time.time() + 86400) == rid + 1
        for r in (before, rid, rid + 1):
            schedule.delete(r)


def _dashboard_value(procdesc):
    """The value ARTIQ's dashboard submits for an untouched argument
    (artiq/gui/entries.py: default_state, then state_to_value)."""
    if procdesc["ty"] == "Scannable":
        default = procdesc["default"][0]
        return dict(default)  # the selected scan's state, with its "ty"
    return procdesc.get("default")


def test_what_artiqs_dashboard_submits_is_accepted(door):
    # the dashboard sends every argument of the explist entry, in SI units, a scan as
    # the selected type's state with "ty", devarg_override and repo_rev None
    lab, master = door
    with master.client("experiment_db") as db:
        classes = db.examine("door.py", True, None)
    arginfo = classes["Door"]["arginfo"]
    arguments = {name: _dashboard_value(info[0]) for name, info in arginfo.items()}
    arguments["freq"] = 9.5e6  # as a spin box in MHz sends it: value * scale
    arguments["sweep"] = {"ty": "CenterScan", "center": 5e6, "span": 2e6, "step": 1e6,
                          "randomize": False, "seed": None}
    sent = {"devarg_override": {}, "log_level": 30, "file": "door.py",
            "class_name": "Door", "arguments": arguments, "repo_rev": None}
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", sent, 0, time.time() + 86400)
        schedule.delete(rid)
        plans = {"devarg_override": {}, "log_level": 30, "file": "plans.py",
                 "class_name": "sweep", "repo_rev": None,
                 "arguments": {"detectors": '["det"]', "motor": "motor", "num": 3}}
        rid = schedule.submit("main", plans, 0, time.time() + 86400)
        schedule.delete(rid)


#: (arguments typed, words of the refusal) through labpipe-client submit
CLIENT_REFUSALS = [
    (["door.py", "points=5000"], "points: 5000 is above the maximum 1000"),
    (["door.py", "nosuch=1"], "nosuch: not an argument of Door"),
    (["door.py", "freq=12MHz"], "freq: "),
    (["door.py", "sweep=" + json.dumps(SCAN_OUT_OF_RANGE)],
     "sweep: 12 MHz is above the global maximum 10 MHz"),
    (["-c", "sweep", "plans.py", 'detectors=["det","dett"]', "motor=motor"],
     "detectors: no device 'dett'"),
]


def test_submit_refusals_through_the_client(door):
    lab, master = door
    with master.client("schedule") as schedule:
        before = pending_forever(schedule)
    for args, words in CLIENT_REFUSALS:
        line = refused_line(master.cli("submit", "-R", *args))
        assert words in line, line
    # a value the client reads by its argument's type is refused before it is sent:
    # a usage error (exit 2) naming the argument and what it takes
    result = master.cli("submit", "-R", "door.py", "mode=medium")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert result.stderr.strip().splitlines() == [
        "labpipe-client: mode: expected one of fast, slow, got 'medium'"], result.stderr
    line = refused_line(master.cli("submit", "--content", "repository/two.py"))
    assert "holds several experiments (First, Second): give the class name" in line
    with master.client("schedule") as schedule:
        after = pending_forever(schedule)
        assert after == before + 1  # no refusal took a RID
        schedule.delete(before)
        schedule.delete(after)


def test_change_checks_arguments_and_a_refusal_changes_nothing(door):
    lab, master = door
    with master.client("schedule") as schedule:
        rid = pending_forever(schedule, points=10)
        entry = schedule.get_status()[rid]
        stored = stored_record(lab, rid)
        assert stored["expid"]["arguments"] == {"points": 10}
        for arguments, words in [
                ({"points": 5000}, f"RID {rid}: door.py: points: 5000 is above the "
                                   "maximum 1000"),
                ({"freq": 12e6}, "freq: 12 MHz is above the maximum 10 MHz"),
                ({"nosuch": 1}, "nosuch: not an argument of Door"),
                ({"sweep": SCAN_OUT_OF_RANGE}, "sweep: 12 MHz is above the global "
                                               "maximum 10 MHz")]:
            with pytest.raises(ValueError) as refused:
                schedule.change(rid, 5, None, None, arguments, None)
            assert words in str(refused.value), str(refused.value)
            assert schedule.get_status()[rid] == entry  # the priority did not change either
            assert stored_record(lab, rid) == stored
        for typed, words in [(["points=5000"], "points: 5000 is above the maximum 1000"),
                             (["nosuch=1"], "nosuch: not an argument of Door")]:
            line = refused_line(master.cli("change", "-P", "5", str(rid), *typed))
            assert f"RID {rid}" in line and words in line, line
            assert schedule.get_status()[rid] == entry
            assert stored_record(lab, rid) == stored
        # a change that is right is applied (merged), on disk too
        schedule.change(rid, None, None, None, {"points": 20, "freq": 2e6}, None)
        assert schedule.get_status()[rid]["expid"]["arguments"] == {"points": 20,
                                                                    "freq": 2e6}
        assert stored_record(lab, rid)["expid"]["arguments"] == {"points": 20, "freq": 2e6}
        schedule.delete(rid)


def test_resubmit_checks_its_overrides(door):
    lab, master = door
    with master.client("schedule") as schedule:
        done = schedule.submit("main", expid("door.py", points=3))
    with master.client("history") as history:
        assert history.wait(done, 60)["status"] == "completed"
        for overrides, words in [
                ({"arguments": {"points": 5000}}, "points: 5000 is above the maximum 1000"),
                ({"arguments": {"nosuch": 1}}, "nosuch: not an argument of Door"),
                ({"arguments": {"sweep": SCAN_OUT_OF_RANGE}}, "sweep: 12 MHz is above"),
                ({"class_name": "Other"}, "no experiment class 'Other'")]:
            with pytest.raises(ValueError) as refused:
                history.resubmit(done, overrides)
            assert words in str(refused.value), str(refused.value)
    for typed, words in [(["points=5000"], "points: 5000 is above the maximum 1000"),
                         (["nosuch=1"], "nosuch: not an argument of Door")]:
        line = refused_line(master.cli("resubmit", str(done), *typed))
        assert words in line, line
    with master.client("schedule") as schedule:
        # no refusal took a RID
        assert pending_forever(schedule) == done + 1
        schedule.delete(done + 1)


def _supply_when_waiting(interactive, rid, values, timeout=60):
    """supply(), once the run asks (before, it is refused as not waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return interactive.supply(rid, values)
        except ValueError as e:
            if "not waiting" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def test_supply_interactive_checks_values_and_the_run_keeps_waiting(door):
    lab, master = door
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("ask.py"))
    with master.client("interactive_arg_db") as interactive:
        with pytest.raises(ValueError) as refused:
            _supply_when_waiting(interactive, rid, {"gain": 99.0})
        assert str(refused.value) == f"RID {rid}: gain: 99 V is above the maximum 10 V"
        with pytest.raises(ValueError, match="gain: expected a number, got 'high'"):
            interactive.supply(rid, {"gain": "high"})
        with pytest.raises(ValueError, match=r"other: not asked for \(the run asks for "
                                             r"gain, note\)"):
            interactive.supply(rid, {"other": 1})
    for typed, words in [(["gain=99"], "gain: 99 V is above the maximum 10 V"),
                         (["gain=-1"], "gain: -1 V is below the minimum 0 V")]:
        line = refused_line(master.cli("supply-interactive", str(rid), *typed))
        assert f"RID {rid}" in line and words in line, line
    with master.client("interactive_arg_db") as interactive:
        interactive.supply(rid, {"gain": 2.5, "note": "ok"})  # still waiting: accepted
    with master.client("history") as history:
        assert history.wait(rid, 60)["status"] == "completed"
    with master.client("dataset_db") as datasets:
        assert list(datasets.get("ask.result")) == [2.5, "ok"]


def test_unit_values_are_shown_in_their_unit():
    from labpipe.language.units import format_value
    assert format_value(12e6, "MHz", 1e6) == "12 MHz"
    assert format_value(3e-7, "us", 1e-6) == "0.3 us"
    assert format_value(5000) == "5000" and format_value(2.5) == "2.5"
    assert format_value("x", "MHz", 1e6) == "'x'"
    assert format_value(math.inf, "ms", 1e-3) == "inf ms"


@pytest.mark.parametrize("desc", [
    {"ty": "NoScan", "value": 3.5, "repetitions": 4},
    {"ty": "NoScan", "value": 3.5, "repetitions": 0},
    {"ty": "RangeScan", "start": 2.0, "stop": -1.0, "npoints": 7, "randomize": True,
     "seed": 3},
    {"ty": "RangeScan", "start": 0.1, "stop": 0.7, "npoints": 1},
    {"ty": "RangeScan", "start": 0.1, "stop": 0.7, "npoints": 0},
    {"ty": "CenterScan", "center": 0.5, "span": 0.6, "step": 0.2},
    {"ty": "CenterScan", "center": 0.5, "span": 0.6, "step": -0.2, "randomize": True},
    {"ty": "CenterScan", "center": 1.0, "span": 0.1, "step": 0.2},
    {"ty": "CenterScan", "center": 1.0, "span": 1.0, "step": 0},
    {"ty": "ExplicitScan", "sequence": [3, -2, 9.5]},
])
def test_extreme_points_bound_the_scan_without_making_it(desc):
    from labpipe.language.scans import extreme_points, scan_from_description
    points = list(scan_from_description(desc))
    extremes = extreme_points(desc)
    if points:
        assert (min(extremes), max(extremes)) == (min(points), max(points))
    else:
        assert extremes == []


@pytest.mark.parametrize("desc, words", [
    ({"ty": "RangeScan", "start": 0, "stop": "x", "npoints": 3}, "stop must be a number"),
    ({"ty": "RangeScan", "start": 0, "stop": 1, "npoints": -3}, "npoints must be"),
    ({"ty": "CenterScan", "center": 0, "span": -1, "step": 1}, "span must be >= 0"),
    ({"ty": "CenterScan", "center": 0, "span": 1e308, "step": 1e-308}, "too many points"),
    ({"ty": "ExplicitScan", "sequence": 5}, "sequence must be a list"),
    ({"ty": "NoScan"}, "NoScan needs 'value'"),
    ("RangeScan", "a scan description is a dict"),
])
def test_scan_descriptions_refused_by_the_check(desc, words):
    from labpipe.language.arguments import Scannable
    from labpipe.language.exceptions import ArgumentError
    with pytest.raises(ArgumentError, match=words):
        Scannable(global_min=-10, global_max=10).check(desc)
