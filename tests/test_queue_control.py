"""Queue control end to end: a real master in the test's event loop, real workers.

Edits of pending runs, held pipelines, progress and time estimates, dry runs, black-box
scripts and device conflicts across pipelines. Experiments synchronise with the test
through gate files, never fixed sleeps.
"""

import logging
import os
import statistics
import time

import pytest

from conftest import GATED, ScheduleRecorder, expid, run_ends, running_master, wait_until

#: a held pipeline's entry in the pipelines notifier
HELD = {"held": True, "device_check": True, "stop_pending": False, "stop_on_failure": False}

DEVICE_DB = """
device_db = {
    "dds0": {"type": "local", "module": "fakedev", "class": "Dev", "arguments": {}},
    "ttl0": {"type": "local", "module": "fakedev", "class": "Dev", "arguments": {}},
    "laser": "dds0",
}
"""

FAKEDEV = """
class Dev:
    def __init__(self, dmgr):
        pass
"""


def cli(*argv):
    """Run labpipe-client in this process; its exit code."""
    from labpipe.client.main import main as client_main
    try:
        client_main(list(argv))
    except SystemExit as e:
        return e.code or 0
    return 0


def _lab_with_devices(lab):
    lab.write("device_db.py", DEVICE_DB)
    lab.write("repository/fakedev.py", FAKEDEV)
    return lab.experiment("gated", GATED)


# --- black-box scripts --------------------------------------------------------------

SCRIPT = """
import os, sys, time
print("script says hello from", os.path.basename(__file__), __name__)
gate = os.path.join(os.path.dirname(__file__), "script_gate")
while os.environ.get("NEVER") is None and not os.path.exists(gate):
    time.sleep(0.005)
print("script done")
"""

LONG_SCRIPT = """
import time

print("long script started")
while True:
    time.sleep(0.005)
"""


async def test_black_box_script_runs_as_one_run_with_its_output_logged(lab, caplog):
    script = lab.write("repository/plain.py", SCRIPT)
    gate = lab.path("repository/script_gate")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit("main", expid(script))
            await wait_until(lambda: (rid, "running") in rec.events)
            open(gate, "w").close()
            await wait_until(lambda: rid in ends, timeout=20)
            assert ends[rid].status == "completed", ends[rid]
            assert rec.statuses(rid) == ["pending", "preparing", "prepare_done", "running",
                                         "run_done", "analyzing", "removed"]
            assert os.path.exists(ends[rid].results)
            assert os.path.basename(ends[rid].results).endswith("-Script.h5")

    caplog.set_level(logging.INFO)
    await main()
    lines = [(getattr(r, "source", None), r.getMessage()) for r in caplog.records]
    said = [src for src, msg in lines if msg == "script says hello from plain.py __main__"]
    assert said and said[0].endswith(",Script)")
    assert any(msg == "script done" for _, msg in lines)


async def test_black_box_script_can_be_deleted(lab, caplog):
    script = lab.write("repository/long.py", LONG_SCRIPT)

    async def main():
        async with running_master(lab, term_timeout=0.5, kill_timeout=0.5) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit("main", expid(script))
            await wait_until(lambda: any(r.getMessage() == "long script started"
                                         for r in caplog.records))
            await m.scheduler.delete(rid)
            await wait_until(lambda: rid in ends)
            assert ends[rid].status == "deleted"
            assert rec.statuses(rid)[-2:] == ["deleting", "removed"]
            assert not m.scheduler.pipelines or rid not in m.scheduler.get_status()

    caplog.set_level(logging.INFO)
    await main()


async def test_examination_never_runs_a_script(lab):
    marker = lab.path("ran")
    lab.write("repository/touch.py", f"open({marker!r}, 'w').close()\n")

    async def main():
        async with running_master(lab) as m:
            assert "touch" not in str(m.experiment_db.explist.raw_view)
            assert not os.path.exists(marker)

    await main()


# --- dry runs ------------------------------------------------------------------------

CHECKED = """
class Checked(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, min=0, max=10, step=1, precision=0, type="int"))
        self.setattr_argument("name", StringValue("x"))
        self.setattr_device("laser")
        self.set_dataset("built", True, broadcast=True, persist=True)

    def run(self):
        self.set_dataset("ran", True, broadcast=True)
"""


async def test_validate_catches_each_problem_and_leaves_no_trace(lab):
    _lab_with_devices(lab)
    checked = lab.experiment("checked", CHECKED)
    script = lab.write("repository/plain.py", "print('hi')\n")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            mods = []
            s.notifier.add_listener(mods.append)
            rid_before = s.rid_counter.last
            assert await s.validate("main", expid(checked, n=3, name="ok")) == []
            assert await s.validate("main", expid(script)) == []
            cases = [
                (expid("repository/missing.py"), ["missing.py"]),
                (dict(expid(checked), class_name="Nope"), ["Nope"]),
                (expid(checked, bogus=1), ["unknown", "bogus"]),
                (expid(checked, name=5), ["'name'", "string"]),
                (expid(checked, n=11), ["'n'", "maximum"]),
                (expid(checked, n="three"), ["'n'"]),
            ]
            for e, words in cases:
                problems = await s.validate("main", e)
                assert len(problems) == 1 and all(w in problems[0] for w in words), \
                    (e, problems)
            lab.write("device_db.py", "device_db = {}\n")
            m.device_db.scan()
            problems = await s.validate("main", expid(checked))
            assert problems == ["device 'laser' is not in the device database"]
            both = await s.validate("main", expid(checked, n=-1, extra=2))
            assert len(both) == 3
            assert (await s.validate("", expid(checked)))[0].startswith("pipeline_name")
            # from the repository (its current revision) and by content
            # (the device database is still empty)
            assert await s.validate("main", dict(expid("checked.py", n=20),
                                                 repo_rev=None)) == [
                "argument 'n': 20 is above the maximum 10",
                "device 'laser' is not in the device database"]
            with open(lab.path(checked)) as f:
                content = f.read()
            assert len(await s.validate("main", {"content": content, "arguments": {"n": 20},
                                                 "class_name": None})) == 2
            # no trace: no schedule mod, no RID taken, no dataset written
            assert mods == [] and s.get_status() == {}
            assert "built" not in m.dataset_db.data.raw_view
            assert s.rid_counter.last == rid_before
            assert await s.submit("main", expid(checked)) == rid_before + 1

    await main()


# --- change ------------------------------------------------------------------------------

async def test_change_pending_runs_and_the_order_follows(lab):
    gated = _lab_with_devices(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            blocker = await s.submit("main", expid(gated, gate=gate, tag="blocker"))
            await wait_until(lambda: (blocker, "running") in rec.events)
            low1 = await s.submit("main", expid(gated, tag="low1"))
            await wait_until(lambda: (low1, "prepare_done") in rec.events)
            low2 = await s.submit("main", expid(gated, tag="low2"))
            moved = await s.submit("main", expid(gated, tag="moved"), due_date=time.time() + 3600)
            # refused: not pending, not in the schedule, bad values (nothing changed)
            for rid, kwargs, exc, word in [
                    (low1, {"priority": 9}, ValueError, "prepare_done"),
                    (blocker, {"priority": 9}, ValueError, "running"),
                    (12345, {"priority": 9}, KeyError, "12345"),
                    (low2, {"priority": "high"}, TypeError, "priority"),
                    (low2, {"priority": 9, "flush": "yes"}, TypeError, "flush")]:
                try:
                    await s.change(rid, **kwargs)
                except exc as e:
                    assert word in str(e)
                else:
                    raise AssertionError(f"change({rid}, {kwargs}) was accepted")
            assert s.get_status()[low2]["priority"] == 0
            # low2 now outranks the prepared low1, with its arguments merged
            await s.change(low2, priority=5, arguments={"tag": "low2b"})
            entry = s.get_status()[low2]
            assert entry["priority"] == 5
            assert entry["expid"]["arguments"] == {"tag": "low2b"}
            # moved to another pipeline, its due date removed: it runs there at once
            await s.change(moved, pipeline_name="other", due_date=0)
            assert s.get_status()[moved]["pipeline"] == "other"
            assert s.get_status()[moved]["due_date"] is None
            await wait_until(lambda: (moved, "removed") in rec.events)
            assert m.dataset_db.get("ended_moved")
            await wait_until(lambda: (low2, "prepare_done") in rec.events)
            open(gate, "w").close()
            await wait_until(lambda: all((r, "removed") in rec.events
                                         for r in (blocker, low1, low2)), timeout=20)
            started = [r for r, st in rec.events if st == "running" and r != moved]
            assert started == [blocker, low2, low1]
            assert m.dataset_db.get("started_low2b") < m.dataset_db.get("started_low1")

    await main()


# --- hold / release --------------------------------------------------------------------

async def test_hold_and_release(lab):
    gated = _lab_with_devices(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            pipelines = m.notifiers["pipelines"]
            await s.hold("main")  # no run there yet
            assert pipelines.raw_view == {"main": HELD}
            held = await s.submit("main", expid(gated, tag="held"))
            # meanwhile another pipeline runs a whole run
            other = await s.submit("other", expid(gated, tag="other"))
            await wait_until(lambda: (other, "removed") in rec.events)
            assert rec.statuses(held) == ["pending"]
            await s.release("main")
            assert pipelines.raw_view == {}
            await wait_until(lambda: (held, "removed") in rec.events)
            # held while a run runs: it finishes, the next does not start
            running = await s.submit("main", expid(gated, gate=gate, tag="running"))
            await wait_until(lambda: (running, "running") in rec.events)
            await s.hold("main")
            waiting = await s.submit("main", expid(gated, tag="waiting"))
            open(gate, "w").close()
            await wait_until(lambda: (running, "removed") in rec.events)
            other = await s.submit("other", expid(gated, tag="other2"))
            await wait_until(lambda: (other, "removed") in rec.events)
            assert rec.statuses(waiting) == ["pending"]
            await s.change(waiting, priority=3)  # still editable while held
            await s.hold("empty-pipeline")
        # the held states survive a restart
        async with running_master(lab) as m:
            assert m.notifiers["pipelines"].raw_view == {
                "main": HELD,
                "empty-pipeline": HELD}
            await m.scheduler.release("empty-pipeline")
            # the run left waiting came back with the schedule, changed, and still waits
            assert {rid: (e["status"], e["priority"])
                    for rid, e in m.scheduler.get_status().items()} == {waiting: ("pending", 3)}

    await main()


async def test_queue_stop_instruction_holds_its_pipeline_when_reached(lab):
    gated = _lab_with_devices(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            ends = run_ends(s)
            pipelines = m.notifiers["pipelines"]
            await s.hold("main")
            first = await s.submit("main", expid(gated, gate=gate, tag="first"))
            after = await s.submit("main", expid(gated, tag="after"))
            stop = await s.submit_instruction("main", "queue_stop", before=after)
            assert s.get_status()[stop]["expid"]["instruction"] == "queue_stop"
            with pytest.raises(ValueError, match="unknown instruction"):
                await s.submit_instruction("main", "queue_pause")
            with pytest.raises(ValueError, match="unknown expid keys"):
                await s.submit("main", dict(s.get_status()[stop]["expid"]))
            await s.release("main")
            await wait_until(lambda: (first, "running") in rec.events)
            # the instruction waits for the run ahead of it; nothing after it prepares
            assert rec.statuses(stop) == ["pending"] and rec.statuses(after) == ["pending"]
            assert pipelines.raw_view == {}
            open(gate, "w").close()
            await wait_until(lambda: (stop, "removed") in rec.events)
            assert ends[stop].status == "completed" and ends[stop].results is None
            assert pipelines.raw_view == {"main": HELD}
            await wait_until(lambda: (first, "removed") in rec.events)
            other = await s.submit("other", expid(gated, tag="other"))
            await wait_until(lambda: (other, "removed") in rec.events)
            assert rec.statuses(after) == ["pending"]
            await s.release("main")
            await wait_until(lambda: (after, "removed") in rec.events)
            assert ends[after].status == "completed"

    await main()


# --- progress and ETA ----------------------------------------------------------------------

PROGRESSING = """
import os, time

class Progressing(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("n", NumberValue(10, step=1, precision=0, type="int"))
        self.setattr_argument("step_s", NumberValue(0.0))
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("report", BooleanValue(True))

    def run(self):
        for i in range(self.n):
            if self.step_s:
                time.sleep(self.step_s)
            if self.report:
                self.scheduler.set_progress(i + 1, self.n, f"step {i + 1}")
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
"""


class EntryRecorder:
    """(time, key, value) of the labpipe keys set in one run's entry."""

    def __init__(self, notifier, keys=("progress", "eta", "started", "blocked_by")):
        self.events = []
        self.keys = keys
        notifier.add_listener(self._on_mod)

    def _on_mod(self, mod):
        if mod["action"] == "setitem" and len(mod["path"]) == 1 and mod["key"] in self.keys:
            self.events.append((time.time(), mod["path"][0], mod["key"], mod["value"]))

    def of(self, rid, key):
        return [(t, v) for t, r, k, v in self.events if r == rid and k == key]


async def test_progress_and_eta_published_and_rate_limited(lab):
    progressing = lab.experiment("progressing", PROGRESSING)
    gate1, gate2 = lab.path("gate1"), lab.path("gate2")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            entries = EntryRecorder(s.notifier)
            # a tight loop: 20000 reports, published at most ~10 times a second
            fast = await s.submit("main", expid(progressing, n=20000, gate=gate1))
            await wait_until(lambda: (s.get_status()[fast].get("progress") or {}).get("done")
                             == 20000)
            published = entries.of(fast, "progress")
            assert published[0][1] is None  # set when the run stage starts
            reports = [v for _, v in published[1:]]
            span = published[-1][0] - published[1][0]
            assert 1 <= len(reports) <= span / 0.1 + 2, (len(reports), span)
            assert reports[-1] == {"done": 20000, "total": 20000, "message": "step 20000"}
            entry = s.get_status()[fast]
            assert entry["started"] <= time.time()
            assert entry["eta"] is not None and abs(entry["eta"] - time.time()) < 5
            open(gate1, "w").close()
            await wait_until(lambda: (fast, "removed") in rec.events)

            # a steady rate: the ETA is where the rate leads
            steady = await s.submit("main", expid(progressing, n=20, step_s=0.05, gate=gate2))
            await wait_until(lambda: (s.get_status()[steady].get("progress") or {}).get("done", 0)
                             >= 10)
            entry = s.get_status()[steady]
            progress, started, eta = entry["progress"], entry["started"], entry["eta"]
            now = time.time()
            assert progress["total"] == 20 and progress["message"].startswith("step")
            elapsed = now - started
            expected = started + elapsed * 20 / progress["done"]
            assert started < now <= eta + 0.5 and abs(eta - expected) < 0.6, \
                (started, now, eta, expected)
            open(gate2, "w").close()
            await wait_until(lambda: (steady, "removed") in rec.events)

            # no report at all: the ETA comes from the earlier run of the same experiment
            silent = await s.submit("main", expid(progressing, n=20, step_s=0.05,
                                                  report=False, gate=gate2))
            await wait_until(lambda: s.get_status().get(silent, {}).get("started"))
            entry = s.get_status()[silent]
            assert entry["progress"] is None and entry["eta"] is not None
            earlier = [r["stages"]["run_done"]["start"] - r["stages"]["running"]["start"]
                       for r in m.history.notifier.raw_view.values()
                       if r["rid"] in (fast, steady)]
            assert len(earlier) == 2
            assert abs(entry["eta"] - entry["started"] - statistics.median(earlier)) < 0.01
            await wait_until(lambda: (silent, "removed") in rec.events)

    await main()


# --- device conflicts -----------------------------------------------------------------

async def test_shared_devices_never_run_together_disjoint_ones_overlap(lab):
    gated = _lab_with_devices(lab)
    gate_a, gate_c = lab.path("gate_a"), lab.path("gate_c")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            a = await s.submit("a", expid(gated, gate=gate_a, tag="a", devices=["dds0"]))
            await wait_until(lambda: (a, "running") in rec.events)
            # b needs dds0 through an alias; c needs another device
            b = await s.submit("b", expid(gated, tag="b", devices=["laser", "ttl0"]))
            c = await s.submit("c", expid(gated, gate=gate_c, tag="c", devices=["ttl0"]))
            await wait_until(lambda: (c, "running") in rec.events)  # overlaps with a
            await wait_until(lambda: s.get_status()[b].get("blocked_by") is not None)
            entry = s.get_status()[b]
            assert entry["status"] == "prepare_done"
            # b waits for a (dds0); c started after b was blocked and holds ttl0 too
            assert entry["blocked_by"][0] == {"rid": a, "pipeline": "a", "devices": ["dds0"]}
            open(gate_a, "w").close()
            await wait_until(lambda: (a, "removed") in rec.events)
            # now only c blocks it
            await wait_until(lambda: s.get_status()[b]["blocked_by"]
                             == [{"rid": c, "pipeline": "c", "devices": ["ttl0"]}])
            open(gate_c, "w").close()
            await wait_until(lambda: (b, "removed") in rec.events)
            d = m.dataset_db
            assert d.get("started_b") > d.get("ended_a") and d.get("started_b") > d.get("ended_c")
            assert d.get("started_c") < d.get("ended_a")  # disjoint devices overlapped
            assert rec.index(c, "running") < rec.index(a, "removed")

    await main()


async def test_device_check_can_be_turned_off_per_pipeline(lab):
    gated = _lab_with_devices(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            await s.set_device_check("free", False)
            assert m.notifiers["pipelines"].raw_view == {
                "free": {"held": False, "device_check": False, "stop_pending": False,
                         "stop_on_failure": False}}
            a = await s.submit("a", expid(gated, gate=gate, tag="a", devices=["dds0"]))
            await wait_until(lambda: (a, "running") in rec.events)
            f = await s.submit("free", expid(gated, tag="f", devices=["dds0"]))
            await wait_until(lambda: (f, "removed") in rec.events)
            assert s.get_status()[a]["status"] == "running"  # they overlapped
            open(gate, "w").close()
            await wait_until(lambda: (a, "removed") in rec.events)
            await s.set_device_check("free", True)
            assert m.notifiers["pipelines"].raw_view == {}

    await main()


# --- the command-line client ------------------------------------------------------------

async def test_client_dry_run(lab, capsys):
    import asyncio
    checked = lab.experiment("checked", CHECKED)
    _lab_with_devices(lab)

    async def main():
        async with running_master(lab) as m:
            port = str(m.port("control"))
            code = await asyncio.to_thread(cli, "--port", port, "submit", "--dry-run",
                                           checked, "n=3")
            assert code == 0 and capsys.readouterr().out == "OK: the run would start\n"
            code = await asyncio.to_thread(cli, "--port", port, "submit", "--dry-run",
                                           checked, "n=30", "zz=1")
            out = capsys.readouterr().out.splitlines()
            assert code == 3 and len(out) == 2 and all(o.startswith("problem: ") for o in out)
            assert m.scheduler.get_status() == {}

    await main()


# --- over the wire ------------------------------------------------------------------------

async def test_queue_control_over_rpc_and_notify(lab):
    from labpipe.protocol.rpc import AsyncClient
    from labpipe.protocol.sync import Subscriber
    gated = _lab_with_devices(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            c = AsyncClient()
            await c.connect_rpc("127.0.0.1", m.port("control"), "schedule")
            sub = Subscriber("pipelines", lambda struct: struct)
            await sub.connect("127.0.0.1", m.port("notify"))
            try:
                methods = (await c.get_rpc_method_list())["methods"]
                assert {"change", "hold", "release", "set_device_check",
                        "validate"} <= set(methods)
                await c.hold("wire")
                await wait_until(lambda: sub.model == {"wire": HELD})
                assert await c.validate("wire", expid(gated, tag=3)) == [
                    "argument 'tag': expected a string, got 3 (int)"]
                blocker = await c.submit("other", expid(gated, gate=gate))
                rid = await c.submit("wire", expid(gated, tag="x"))
                await c.change(rid, priority=2, arguments={"tag": "y"})
                with pytest.raises(KeyError):
                    await c.change(99999, priority=1)
                await wait_until(lambda: (blocker, "running") in rec.events)
                with pytest.raises(ValueError, match="only pending"):
                    await c.change(blocker, priority=1)
                status = await c.get_status()
                assert status[rid]["priority"] == 2 and status[rid]["status"] == "pending"
                assert status[rid]["expid"]["arguments"] == {"tag": "y"}
                assert status[blocker]["started"] <= time.time()
                await c.release("wire")
                await wait_until(lambda: (rid, "removed") in rec.events)
                await wait_until(lambda: sub.model == {})
                assert m.dataset_db.get("ended_y")
                open(gate, "w").close()
                await wait_until(lambda: (blocker, "removed") in rec.events)
            finally:
                c.close_rpc()
                await sub.close()

    await main()


YIELDING = """
import os, time

class Yielding(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("devices", PYONValue([]))
        for key in self.devices:
            self.get_device(key)

    def run(self):
        while not os.path.exists(self.gate):
            if self.scheduler.check_pause():
                self.set_dataset("yielded_at", time.time(), broadcast=True)
                self.scheduler.pause()
                self.set_dataset("resumed_at", time.time(), broadcast=True)
            time.sleep(0.005)
"""


async def test_no_yield_to_a_run_that_waits_for_devices(lab):
    gated = _lab_with_devices(lab)
    yielding = lab.experiment("yielding", YIELDING)
    gate_a, gate_low = lab.path("gate_a"), lab.path("gate_low")

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            a = await s.submit("a", expid(gated, gate=gate_a, tag="a", devices=["dds0"]))
            await wait_until(lambda: (a, "running") in rec.events)
            low = await s.submit("b", expid(yielding, gate=gate_low, devices=["ttl0"]))
            await wait_until(lambda: (low, "running") in rec.events)
            high = await s.submit("b", expid(gated, tag="h", devices=["dds0"]), priority=10)
            await wait_until(lambda: (high, "prepare_done") in rec.events)
            # high outranks low but could not start: low need not yield
            assert s.check_pause(low) is False
            open(gate_a, "w").close()
            # dds0 is free: now low yields, high runs, low resumes
            await wait_until(lambda: (high, "removed") in rec.events)
            open(gate_low, "w").close()
            await wait_until(lambda: (low, "removed") in rec.events)
            d = m.dataset_db
            assert d.get("ended_a") < d.get("yielded_at") < d.get("started_h") \
                < d.get("ended_h") < d.get("resumed_at")
            assert rec.statuses(low).count("paused") == 1

    await main()


async def test_client_change_hold_release(lab):
    import asyncio
    gated = _lab_with_devices(lab)

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            port = ["--port", str(m.port("control"))]
            assert await asyncio.to_thread(cli, *port, "hold", "main", "spare") == 0
            assert set(m.notifiers["pipelines"].raw_view) == {"main", "spare"}
            rid = await s.submit("main", expid(gated, tag="a"), due_date=time.time() + 3600)
            assert await asyncio.to_thread(cli, *port, "change", "-P", "4", "-t", "none",
                                           "--flush", str(rid), "tag=b") == 0
            entry = s.get_status()[rid]
            assert (entry["priority"], entry["due_date"], entry["flush"]) == (4, None, True)
            assert entry["expid"]["arguments"] == {"tag": "b"}
            assert await asyncio.to_thread(cli, *port, "change", "-P", "1", "999") == 3
            assert await asyncio.to_thread(cli, *port, "release", "main", "spare") == 0
            await wait_until(lambda: (rid, "removed") in rec.events)
            assert m.dataset_db.get("ended_b")
            assert m.notifiers["pipelines"].raw_view == {}

    await main()
