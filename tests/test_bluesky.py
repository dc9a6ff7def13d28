"""labpipe.bluesky in-process: a real RunEngine on ophyd.sim devices, a stand-in
scheduler, the worker's DatasetManager and the results file read back with h5py."""

import h5py
import numpy
import pytest
from bluesky import plan_stubs as bps
from bluesky.plans import count, scan
from bluesky.suspenders import SuspendBoolHigh
from ophyd import Signal
from ophyd.sim import SynAxis, SynGauss

from labpipe.experiment import EnvExperiment, TerminationRequested
from labpipe.protocol import pyon
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.results import write_results


class FakeScheduler:
    """check_pause() is true at the checkpoints listed; pause() records the calls."""

    def __init__(self, pause_at=(), terminate=False):
        self.rid = 42
        self.pipeline_name = "main"
        self.expid = {"file": "repository/x.py", "repo_rev": "abc123"}
        self.pause_at = set(pause_at)
        self.terminate = terminate
        self.checks = 0
        self.pauses = []

    def check_pause(self, rid=None):
        self.checks += 1
        return self.checks in self.pause_at

    def pause(self):
        self.pauses.append(self.checks)
        if self.terminate:
            raise TerminationRequested

    def check_termination(self, rid=None):
        return self.terminate and bool(self.pauses or self.terminate_now)

    terminate_now = False


class Devices:
    def __init__(self, scheduler):
        motor = SynAxis(name="motor", delay=0.0)
        self.devices = {"scheduler": scheduler, "motor": motor,
                        "det": SynGauss("det", motor, "motor", center=0.0, Imax=1000.0,
                                        sigma=1.0)}

    def get(self, key):
        return self.devices[key]


class Env(EnvExperiment):
    def build(self):
        self.setattr_device("motor")
        self.setattr_device("det")


def make_env(scheduler):
    mods = []
    dataset_mgr = DatasetManager(mods.append, lambda key: (_ for _ in ()).throw(KeyError(key)))
    env = Env((Devices(scheduler), dataset_mgr, None, {}))
    return env, dataset_mgr, mods


def live(mods, key):
    """The value of a broadcast dataset as the master rebuilds it from the mods."""
    value = None
    for mod in mods:
        if mod["action"] == "setitem" and mod["path"] == [] and mod["key"] == key:
            value = list(mod["value"][1])
        elif mod["action"] == "append" and mod["path"] == [key, 1]:
            value.append(mod["x"])
    return value


def test_scan_streams_datasets_and_archives_documents(tmp_path):
    scheduler = FakeScheduler()
    env, dataset_mgr, mods = make_env(scheduler)
    uids = env.run_plan(scan([env.det], env.motor, -2, 2, 5), purpose="test")
    assert len(uids) == 1
    positions = [-2.0, -1.0, 0.0, 1.0, 2.0]
    expected = [1000.0 * numpy.exp(-x * x / 2) for x in positions]
    assert live(mods, "bluesky.primary.motor") == positions
    assert live(mods, "bluesky.primary.det") == pytest.approx(expected)
    assert "bluesky.primary.det" not in dataset_mgr.local  # broadcast, not archived
    path = tmp_path / "r.h5"
    write_results(path, rid=42, start_time=0.0, run_time=0.0, expid=scheduler.expid,
                  extra_groups={name: provider()
                                for name, provider in dataset_mgr.result_groups.items()})
    with h5py.File(path, "r") as f:
        run = f["bluesky/run_0"]
        assert run["uid"][()].decode() == uids[0]
        numpy.testing.assert_allclose(run["primary/data/motor"][()], positions)
        numpy.testing.assert_allclose(run["primary/data/det"][()], expected)
        assert list(run["primary/seq_num"][()]) == [1, 2, 3, 4, 5]
        start = pyon.decode(run["start"][()].decode())
        stop = pyon.decode(run["stop"][()].decode())
    assert start["uid"] == uids[0] and start["purpose"] == "test"
    assert (start["rid"], start["pipeline"], start["repo_rev"]) == (42, "main", "abc123")
    assert start["expid"]["file"] == "repository/x.py"
    assert stop["exit_status"] == "success" and stop["num_events"]["primary"] == 5


def test_an_experiment_and_its_children_share_the_session_of_its_dataset_manager():
    env, dataset_mgr, _ = make_env(FakeScheduler())
    child = Env(env)
    assert child.get_run_engine() is env.get_run_engine()
    assert dataset_mgr.plan_session(env).engine is env.get_run_engine()


def test_a_dataset_manager_without_plan_sessions_is_refused_in_one_line():
    """The language never imports bluesky: run_plan asks the dataset manager for the
    session, and one that makes none (not a run's) gets a one-line error."""
    class NoSessions:
        def get(self, key, archive=False):
            raise KeyError(key)

    env = Env((Devices(FakeScheduler()), NoSessions(), None, {}))
    with pytest.raises(RuntimeError, match="no plan session") as info:
        env.run_plan(count([env.det], num=1))
    assert "\n" not in str(info.value)


@pytest.fixture
def every_checkpoint(monkeypatch):
    """Ask the scheduler at every checkpoint (no rate limit)."""
    monkeypatch.setattr("labpipe.bluesky.pausing.CHECK_INTERVAL", 0.0)


def test_pause_at_checkpoint_resumes_without_losing_points(every_checkpoint):
    scheduler = FakeScheduler(pause_at={3})
    env, dataset_mgr, mods = make_env(scheduler)
    env.run_plan(count([env.det], num=6))
    assert scheduler.pauses == [3]
    assert scheduler.checks >= 6  # at least one checkpoint per point
    run = dataset_mgr.result_groups["bluesky"]()
    assert run["run_0/primary/seq_num"] == [1, 2, 3, 4, 5, 6]
    assert run["run_0/interruptions/data/interruption"] == ["pause", "resume"]
    assert len(live(mods, "bluesky.primary.det")) == 6


def test_termination_aborts_the_plan_at_a_checkpoint(every_checkpoint):
    scheduler = FakeScheduler(pause_at={7}, terminate=True)
    env, dataset_mgr, mods = make_env(scheduler)
    with pytest.raises(TerminationRequested):
        env.run_plan(count([env.det], num=None))
    groups = dataset_mgr.result_groups["bluesky"]()
    seq_num = groups["run_0/primary/seq_num"]
    assert len(seq_num) >= 3 and seq_num == list(range(1, len(seq_num) + 1))
    assert groups["run_0/stop"]["exit_status"] == "abort"
    # the RunEngine is idle again: the experiment can run another plan
    env.run_plan(count([env.det], num=2))
    assert dataset_mgr.result_groups["bluesky"]()["run_1/primary/seq_num"] == [1, 2]


def test_checks_are_rate_limited(monkeypatch):
    monkeypatch.setattr("labpipe.bluesky.pausing.CHECK_INTERVAL", 60.0)
    scheduler = FakeScheduler()
    env, dataset_mgr, mods = make_env(scheduler)
    env.run_plan(count([env.det], num=20))
    assert scheduler.checks == 1  # the first checkpoint asks, then none for a minute


def test_suspender_installed_by_the_experiment_works():
    scheduler = FakeScheduler()
    env, dataset_mgr, mods = make_env(scheduler)
    beam_off = Signal(name="beam_off", value=0)
    env.get_run_engine().install_suspender(SuspendBoolHigh(beam_off, sleep=0))

    def plan():
        yield from bps.mv(env.motor, 1)
        # trips the suspender from inside the plan; a timer puts the beam back
        import threading
        threading.Timer(0.2, beam_off.put, args=(0,)).start()
        beam_off.put(1)
        yield from count([env.det, beam_off], num=2)

    env.run_plan(plan())
    groups = dataset_mgr.result_groups["bluesky"]()
    assert groups["run_0/primary/seq_num"] == [1, 2]
    # the plan waited for the beam: both points were taken with it back
    assert groups["run_0/primary/data/beam_off"] == [0, 0]
    assert groups["run_0/stop"]["exit_status"] == "success"


# Plans as experiments

from labpipe.bluesky.plans import (experiments_from_plans, is_plan_experiment,  # noqa: E402
                                   plan_arguments, plan_expid, plan_experiment,
                                   plan_parameters)
from labpipe.language.argument_managers import ProcessArgumentManager  # noqa: E402


def test_plan_parameters_from_signatures():
    assert plan_parameters(count) == [("detectors", "devices", inspect_empty()),
                                      ("num", "pyon", 1), ("delay", "pyon", 0.0)]
    assert [k for k, _, _ in plan_parameters(scan)] == ["detectors", "*args", "num"]

    def mine(det, motors, points: int, width=1.5, label="x", *, per_step=print, md=None,
             **extra):
        yield from ()

    assert plan_parameters(mine) == [
        ("det", "device", inspect_empty()), ("motors", "devices", inspect_empty()),
        ("points", "int", inspect_empty()), ("width", "float", 1.5), ("label", "str", "x"),
        ("**kwargs", "varkw", {})]


def inspect_empty():
    import inspect
    return inspect.Parameter.empty


def test_plan_experiment_is_still_the_plan():
    namespace = {"count": count, "scan": scan, "__plans__": ["count", "scan"]}
    made = experiments_from_plans(namespace)
    assert set(made) == {"count", "scan"} and all(map(is_plan_experiment, made.values()))
    motor = SynAxis(name="motor", delay=0.0)
    msgs = list(namespace["scan"]([motor], motor, 0, 1, num=2))
    assert any(m.command == "open_run" for m in msgs)
    assert namespace["count"].plan is count


def test_plan_arguments_map_queueserver_items():
    keys = ["detectors", "num", "delay"]
    assert plan_arguments(keys, [["det1"]], {"num": 3}) == {"detectors": ["det1"], "num": 3}
    assert plan_arguments(["detectors", "*args", "num"], [["d"], "m", -1, 1], {}) == \
        {"detectors": ["d"], "*args": ["m", -1, 1]}
    assert plan_arguments(["a", "**kwargs"], [], {"a": 1, "b": 2}) == \
        {"a": 1, "**kwargs": {"b": 2}}
    with pytest.raises(TypeError, match="unknown argument 'bogus'"):
        plan_arguments(keys, [], {"bogus": 1})
    with pytest.raises(TypeError, match="positional"):
        plan_arguments(keys, [1, 2, 3, 4])
    with pytest.raises(TypeError, match="twice"):
        plan_arguments(keys, [["d"]], {"detectors": ["d"]})


class DevicesWithDB(Devices):
    def get_device_db(self):
        return {"motor": {}, "det": {}}


def test_plan_experiment_runs_with_device_names():
    @plan_experiment
    def line(detectors, motor: SynAxis, start: float = 0.0, stop: float = 1.0,
             num: int = 2, *, md=None):
        """A line scan"""
        return (yield from scan(detectors, motor, start, stop, num, md=md))

    scheduler = FakeScheduler()
    mods = []
    dataset_mgr = DatasetManager(mods.append, lambda key: (_ for _ in ()).throw(KeyError(key)))
    argument_mgr = ProcessArgumentManager({"detectors": ["det"], "motor": "motor",
                                           "stop": 2.0, "num": 3})
    exp = line((DevicesWithDB(scheduler), dataset_mgr, argument_mgr, {}))
    argument_mgr.check_unprocessed()
    # with the device database at hand, a device parameter chooses among its keys
    with pytest.raises(Exception, match="not one of the choices"):
        line((DevicesWithDB(scheduler), dataset_mgr,
              ProcessArgumentManager({"detectors": ["det"], "motor": "nope"}), {}))
    exp.run()
    assert len(exp.uids) == 1
    assert live(mods, "bluesky.primary.motor") == [0.0, 1.0, 2.0]


def test_plan_expid_finds_the_plan_in_explist():
    explist = {"Take readings": {"file": "plans.py", "class_name": "count",
                                 "arginfo": {"detectors": [{}, "plan", None],
                                             "num": [{}, "plan", None]}},
               "Other": {"file": "other.py", "class_name": "scan", "arginfo": {}},
               "Again": {"file": "more.py", "class_name": "scan", "arginfo": {}}}
    assert plan_expid(explist, "count", [["det1"]], {"num": 3}) == {
        "file": "plans.py", "class_name": "count", "repo_rev": None, "log_level": 30,
        "arguments": {"detectors": ["det1"], "num": 3}}
    with pytest.raises(ValueError, match="no plan 'nope'"):
        plan_expid(explist, "nope")
    with pytest.raises(ValueError, match="several files"):
        plan_expid(explist, "scan")
    assert plan_expid(explist, "scan", file="more.py")["file"] == "more.py"
    with pytest.raises(ValueError, match="unknown argument 'x'"):
        plan_expid(explist, "count", [], {"x": 1})


def test_plan_sees_its_own_exceptions(every_checkpoint):
    """The preprocessor passes responses and exceptions through to the plan."""
    from bluesky.utils import Msg

    scheduler = FakeScheduler(pause_at={2})
    env, dataset_mgr, mods = make_env(scheduler)
    caught, returned = [], []

    class Unreadable:
        name = "unreadable"

        def read(self):
            raise RuntimeError("detector unplugged")

    def plan():
        yield from bps.checkpoint()
        yield from bps.checkpoint()
        try:
            yield Msg("read", Unreadable())
        except Exception as e:  # bluesky refuses it: not Readable
            caught.append(type(e).__name__)
        returned.append((yield from count([env.det], num=2)))

    env.run_plan(plan())
    assert scheduler.pauses == [2]
    assert caught == ["AssertionError"]
    assert isinstance(returned[0], str)  # count's return value (its run uid) came back
    assert len(dataset_mgr.result_groups["bluesky"]()["run_0/primary/seq_num"]) == 2


def test_termination_of_a_suspended_plan(monkeypatch):
    """A suspended plan reaches no checkpoint: the watcher pauses it after the grace."""
    monkeypatch.setattr("labpipe.bluesky.pausing.WATCH_INTERVAL", 0.02)
    monkeypatch.setattr("labpipe.bluesky.pausing.TERMINATION_GRACE", 0.1)
    scheduler = FakeScheduler(terminate=True)
    env, dataset_mgr, mods = make_env(scheduler)
    beam_off = Signal(name="beam_off", value=0)
    env.get_run_engine().install_suspender(SuspendBoolHigh(beam_off, sleep=0))

    def plan():
        yield from count([env.det], num=2)
        beam_off.put(1)  # the beam goes and never comes back
        scheduler.terminate_now = True
        yield from count([env.det], num=2)

    try:
        with pytest.raises(TerminationRequested):
            env.run_plan(plan())
    finally:
        beam_off.put(0)
    groups = dataset_mgr.result_groups["bluesky"]()
    assert groups["run_0/stop"]["exit_status"] == "success"
    if "run_1/uid" in groups:  # the second run may have opened before suspending
        assert groups["run_1/stop"]["exit_status"] == "abort"
    assert env.get_run_engine().state == "idle"
