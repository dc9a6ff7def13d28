"""The scheduler end to end: a real master in the test's event loop, real workers.

Experiments synchronise with the test through gate files (an experiment waits until a
file exists), never through fixed sleeps.
"""

import os
import time

import h5py

from conftest import (GATED, STAMP, TERMINATING, ScheduleRecorder, expid, run_ends,
                      running_master, wait_until)

STAGES = """
import time

class Stages(EnvExperiment):
    def build(self):
        self.setattr_argument("prepare_s", NumberValue(0.0))
        self.setattr_argument("run_s", NumberValue(0.0))
        self.setattr_argument("analyze_s", NumberValue(0.0))

    def prepare(self):
        time.sleep(self.prepare_s)

    def run(self):
        time.sleep(self.run_s)

    def analyze(self):
        time.sleep(self.analyze_s)
"""


async def test_runs_in_precedence_order(lab):
    gated = lab.experiment("gated", GATED)
    gate1, gate2 = lab.path("gate1"), lab.path("gate2")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            s = m.scheduler
            blocker = await s.submit("main", expid(gated, gate=gate1))
            await wait_until(lambda: (blocker, "running") in rec.events)
            low = await s.submit("main", expid(gated), priority=0)
            high = await s.submit("main", expid(gated, gate=gate2), priority=5)
            high_later = await s.submit("main", expid(gated), priority=5)
            early_due = await s.submit("main", expid(gated), priority=0,
                                       due_date=time.time() - 100)
            future = await s.submit("main", expid(gated), priority=9,
                                    due_date=time.time() + 0.6)
            # low was prepared ahead as soon as it came; high outranks it, so it is
            # prepared ahead too; the others do not outrank high.
            await wait_until(lambda: (high, "prepare_done") in rec.events)
            assert (high_later, "preparing") not in rec.events
            open(gate1, "w").close()
            # while high runs, high_later (outranking the prepared low) is prepared
            await wait_until(lambda: (high_later, "prepare_done") in rec.events)
            open(gate2, "w").close()
            await wait_until(lambda: not m.scheduler.notifier.raw_view, timeout=20)
            started = [r for r, st in rec.events if st == "running"]
            # equal priority: lower RID first; a due date in the past counts after none;
            # the future run, of the highest priority, was not eligible at first.
            assert started[:4] == [blocker, high, high_later, low]
            assert set(started[4:]) == {early_due, future}

    await main()


async def test_due_date_holds_a_run_back(lab):
    gated = lab.experiment("gated", GATED)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            due = time.time() + 0.5
            rid = await m.scheduler.submit("main", expid(gated), due_date=due)
            await wait_until(lambda: (rid, "running") in rec.events)
            assert time.time() >= due

    await main()


async def test_flush_waits_for_earlier_runs(lab):
    gated = lab.experiment("gated", GATED)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            first = await m.scheduler.submit("main", expid(gated, gate=gate))
            await wait_until(lambda: (first, "running") in rec.events)
            flushed = await m.scheduler.submit("main", expid(gated), flush=True)
            await wait_until(lambda: (flushed, "flushing") in rec.events)
            open(gate, "w").close()
            await wait_until(lambda: (flushed, "removed") in rec.events)
            # the flushing run prepared only once the first run had left
            assert rec.index(first, "removed") < rec.index(flushed, "preparing")

    await main()


async def test_stages_overlap(lab):
    stages = lab.experiment("stages", STAGES)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            rids = [await m.scheduler.submit("main", expid(stages, prepare_s=0.3,
                                                           run_s=0.3, analyze_s=0.3))
                    for _ in range(3)]
            await wait_until(lambda: all((r, "removed") in rec.events for r in rids),
                             timeout=20)
            a, b, c = rids
            # b prepares while a runs; a analyzes while b runs
            assert rec.index(a, "running") < rec.index(b, "preparing") < rec.index(a, "run_done")
            assert rec.index(b, "running") < rec.index(a, "removed")
            assert rec.index(b, "running") < rec.index(c, "preparing") < rec.index(b, "run_done")
            for r in rids:
                assert rec.statuses(r) == ["pending", "preparing", "prepare_done", "running",
                                           "run_done", "analyzing", "removed"]

    await main()


PAUSING = """
import os, time

class Pausing(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))

    def run(self):
        while not os.path.exists(self.gate):
            time.sleep(0.005)
        # the higher run is prepared by now: pause must yield to it
        while not self.scheduler.check_pause():
            time.sleep(0.005)
        self.set_dataset("paused_at", time.time(), broadcast=True)
        self.scheduler.pause()
        self.set_dataset("resumed_at", time.time(), broadcast=True)
"""

async def test_pause_yields_to_higher_priority_and_resumes(lab):
    pausing = lab.experiment("pausing", PAUSING)
    stamp = lab.experiment("stamp", STAMP)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            low = await m.scheduler.submit("main", expid(pausing, gate=gate))
            await wait_until(lambda: (low, "running") in rec.events)
            high = await m.scheduler.submit("main", expid(stamp), priority=10)
            await wait_until(lambda: (high, "prepare_done") in rec.events)
            open(gate, "w").close()
            await wait_until(lambda: (low, "removed") in rec.events, timeout=20)
            assert rec.statuses(low) == ["pending", "preparing", "prepare_done", "running",
                                         "paused", "running", "run_done", "analyzing",
                                         "removed"]
            assert rec.index(low, "paused") < rec.index(high, "running") \
                < rec.index(high, "run_done")
            d = m.dataset_db
            assert d.get("paused_at") < d.get("high_ran_at") < d.get("resumed_at")

    await main()


async def test_graceful_termination(lab):
    terminating = lab.experiment("terminating", TERMINATING)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = []
            m.scheduler.on_run_end.append(lambda run, end: ends.append((run.rid, end)))
            rid = await m.scheduler.submit("main", expid(terminating))
            await wait_until(lambda: m.dataset_db.data.raw_view.get("terminating.started"))
            assert m.scheduler.check_termination(rid) is False
            await m.scheduler.request_termination(rid)
            await wait_until(lambda: (rid, "removed") in rec.events)
            assert "deleting" not in rec.statuses(rid)
            (end_rid, end), = ends
            assert end_rid == rid and end.status == "terminated"
            assert end.results and os.path.exists(end.results)
            with h5py.File(end.results) as f:  # what it collected, and why it ended
                assert f["rid"][()] == rid
                assert f["datasets/terminating.started"][()]
                assert "terminated" in f["error"][()].decode()

    await main()


HUNG = """
class Hung(EnvExperiment):
    def build(self):
        self.setattr_argument("where", StringValue("run"))
        if self.where == "build":
            self.spin()

    def spin(self):
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL will do
        self.set_dataset("spinning", self.where, broadcast=True)
        while True:
            pass

    def run(self):
        self.spin()
"""


async def test_delete_hung_run_in_build_and_run(lab, caplog):
    hung = lab.experiment("hung", HUNG)
    lab.experiment("gated", GATED)

    async def main():
        async with running_master(lab, term_timeout=0.3, kill_timeout=0.3) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            for where in ("run", "build"):
                rid = await m.scheduler.submit(where, expid(hung, where=where))
                await wait_until(lambda: m.dataset_db.data.raw_view.get("spinning", (0, 0))[1]
                                 == where)
                await m.scheduler.delete(rid)
                await wait_until(lambda: (rid, "removed") in rec.events)
                assert rec.statuses(rid)[-2:] == ["deleting", "removed"]
            # the master still runs experiments
            ok = await m.scheduler.submit("main", expid("repository/gated.py"))
            await wait_until(lambda: (ok, "removed") in rec.events)
            assert "analyzing" in rec.statuses(ok)

    await main()
    messages = [r.getMessage() for r in caplog.records]
    assert any("SIGTERM" in msg for msg in messages)
    assert any("SIGKILL" in msg for msg in messages)


FAILURES = {
    "raises": """
class Raises(EnvExperiment):
    def run(self):
        raise ValueError("the magnet quenched")
""",
    "exits": """
import os
class Exits(EnvExperiment):
    def run(self):
        os._exit(3)
""",
    "syntax": """
class Broken(EnvExperiment):
    def build(self):
        self.setattr_argument("load", BooleanValue(False))
        if self.load:
            import broken_helper  # a sibling module with a syntax error
    def run(self):
        pass
""",
    "nodevice": """
class NoDevice(EnvExperiment):
    def build(self):
        self.setattr_device("no_such_device")
    def run(self):
        pass
""",
    "badarg": """
class BadArg(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, min=0, max=10, step=1, precision=0, type="int"))
        if self.n == 1:  # examined with the default: "m" is in its argument list
            self.setattr_argument("m", NumberValue(0))
    def run(self):
        pass
""",
}


async def test_failures_are_contained(lab):
    files = {name: lab.experiment(name, body) for name, body in FAILURES.items()}
    lab.write("repository/broken_helper.py", "def f(:\n    pass\n")
    lab.experiment("gated", GATED)

    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            rids = {}
            for name, file in files.items():
                # a name build() asks for only with other values: only the worker can
                # tell (names the examination did not see, and values out of range, are
                # refused at submission: test_argument_values_refused...)
                arguments = {"badarg": {"n": 5, "m": 1},
                             "syntax": {"load": True}}.get(name, {})
                rids[name] = await m.scheduler.submit("main", expid(file, **arguments))
            ok = await m.scheduler.submit("main", expid("repository/gated.py"))
            await wait_until(lambda: ok in ends, timeout=30)
            assert ends[ok].status == "completed"
            for name, rid in rids.items():
                assert ends[rid].status == "failed", name
            assert "the magnet quenched" in ends[rids["raises"]].error
            assert "died" in ends[rids["exits"]].error
            assert "SyntaxError" in ends[rids["syntax"]].error
            assert "no_such_device" in ends[rids["nodevice"]].error
            assert "'m'" in ends[rids["badarg"]].error
            assert "\n" not in ends[rids["badarg"]].error
            # results are kept for a failed run and for a worker that died
            assert os.path.exists(ends[rids["raises"]].results)
            assert os.path.exists(ends[rids["exits"]].results)

    await main()


async def test_two_pipelines_run_in_parallel(lab):
    gated = lab.experiment("gated", GATED)
    gate_a, gate_b = lab.path("gate_a"), lab.path("gate_b")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            a = await m.scheduler.submit("alpha", expid(gated, gate=gate_a))
            b = await m.scheduler.submit("beta", expid(gated, gate=gate_b))
            await wait_until(lambda: (a, "running") in rec.events
                             and (b, "running") in rec.events)
            assert set(m.scheduler.pipelines) == {"alpha", "beta"}
            open(gate_b, "w").close()
            await wait_until(lambda: (b, "removed") in rec.events)
            assert m.scheduler.get_status()[a]["status"] == "running"
            await wait_until(lambda: "beta" not in m.scheduler.pipelines)
            open(gate_a, "w").close()
            await wait_until(lambda: not m.scheduler.pipelines)

    await main()


async def test_invalid_submissions_refused(lab):
    lab.experiment("syntax", "class Broken(EnvExperiment)\n    pass\n")
    lab.experiment("ok", GATED)

    async def main():
        async with running_master(lab) as m:
            for exp, word in [({"file": "repository/syntax.py"}, "SyntaxError"),
                              ({"file": "repository/missing.py"}, "missing.py"),
                              ({"file": "repository/ok.py", "class_name": "Nope"}, "Nope")]:
                try:
                    await m.scheduler.submit("main", exp)
                except ValueError as exc:
                    assert word in str(exc) and "\n" not in str(exc)
                else:
                    raise AssertionError(f"{exp} was accepted")
            for args, word in [(("", {"file": "x.py"}), "pipeline_name"),
                               (("main", "x.py"), "expid"),
                               (("main", {"class_name": "X"}), "file"),
                               (("main", {"file": "x.py", "bogus": 1}), "bogus"),
                               (("main", {"file": "x.py"}, "high"), "priority")]:
                try:
                    await m.scheduler.submit(*args)
                except (TypeError, ValueError) as exc:
                    assert word in str(exc)
                else:
                    raise AssertionError(f"{args} was accepted")
            assert m.scheduler.get_status() == {}

    await main()


async def test_argument_values_refused_at_submission(lab):
    lab.experiment("args", """
class Args(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, min=0, max=10, step=1, precision=0, type="int"))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "fast"))
        self.setattr_argument("on", BooleanValue(True))
    def run(self):
        pass
""")

    async def main():
        async with running_master(lab) as m:
            for arguments, words in [({"n": 11}, ("n: ", "maximum")),
                                     ({"n": "three"}, ("n: ",)),
                                     ({"mode": "medium"}, ("mode: ",)),
                                     ({"on": "yes"}, ("on: ",))]:
                try:
                    await m.scheduler.submit("main", expid("repository/args.py",
                                                           **arguments))
                except ValueError as exc:
                    assert all(w in str(exc) for w in words), str(exc)
                    assert "\n" not in str(exc)
                else:
                    raise AssertionError(f"{arguments} was accepted")
            assert m.scheduler.get_status() == {}
            ok = await m.scheduler.submit("main", expid("repository/args.py", n=10,
                                                        mode="slow", on=False))
            assert m.scheduler.get_status()[ok]["status"]

    await main()


async def test_build_timeout_contains_a_hang_at_import(lab):
    # outside the repository, so that the master's scans do not examine it
    hangs = lab.write("elsewhere/hangs.py", """
from labpipe.experiment import *
import time

class Never(EnvExperiment):
    def build(self):
        self.setattr_argument("hang", BooleanValue(False))
        if self.hang:  # not when examined (with the default): only in the run's build
            time.sleep(3600)
    def run(self):
        pass
""")
    lab.experiment("gated", GATED)

    async def main():
        async with running_master(lab, build_timeout=0.5, term_timeout=0.2,
                                  kill_timeout=0.2) as m:
            ends = run_ends(m.scheduler)
            # submitted by content, examined at submission with its defaults: it
            # passes the check and hangs in the worker's build
            with open(lab.path(hangs)) as f:
                rid = await m.scheduler.submit("main", {"content": f.read(),
                                                        "arguments": {"hang": True}})
            ok = await m.scheduler.submit("main", expid("repository/gated.py"))
            await wait_until(lambda: ok in ends, timeout=20)
            assert ends[rid].status == "failed"
            assert "build timeout" in ends[rid].error and "0.5 s" in ends[rid].error
            assert ends[ok].status == "completed"

    await main()


SELF_SUBMITTING = """
class Again(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("again", BooleanValue(True))

    def run(self):
        if not self.again:
            return
        s = self.scheduler
        status = s.get_status()
        assert status[s.rid]["status"] == "running"
        # defaults from the current run: pipeline, expid, priority
        follow_up = s.submit(expid=dict(s.expid, arguments={"again": False}))
        doomed = s.submit(due_date=9e9)
        s.delete(doomed)
        self.set_dataset("again.ids", [s.rid, follow_up, doomed, s.pipeline_name,
                                       s.priority], broadcast=True)
"""


async def test_scheduler_device_inside_a_run(lab):
    again = lab.experiment("again", SELF_SUBMITTING)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            rid = await m.scheduler.submit("side", expid(again), priority=3)
            await wait_until(lambda: "again.ids" in m.dataset_db.data.raw_view, timeout=20)
            me, follow_up, doomed, pipeline, priority = m.dataset_db.get("again.ids")
            assert (me, pipeline, priority) == (rid, "side", 3)
            await wait_until(lambda: (follow_up, "removed") in rec.events, timeout=20)
            assert "analyzing" in rec.statuses(follow_up)
            assert rec.statuses(doomed)[-2:] == ["deleting", "removed"]
            entry = [e for r, e in rec.events if r == follow_up]
            assert entry[0] == "pending"

    await main()
