"""Queue positions, clear, execute_now, hold after the current run, stop on failure:
every call over the wire (the control port's RPC), real worker processes, the schedule
store on disk (docs/queue-control.md)."""

import contextlib
import os

import pytest

from conftest import (FAILING, GATED, MasterProcess, ScheduleRecorder, expid,
                      one_line_refusal, run_ends, running_master, wait_for, wait_until)
from labpipe.protocol.rpc import AsyncClient

HELD_ENTRY = {"held": True, "device_check": True, "stop_pending": False,
              "stop_on_failure": False}


def _gated(lab):
    lab.write("repository/gated.py", GATED)
    return "repository/gated.py"


@contextlib.asynccontextmanager
async def schedule_client(m):
    c = AsyncClient()
    await c.connect_rpc("127.0.0.1", m.port("control"), "schedule")
    try:
        yield c
    finally:
        c.close_rpc()


def kill_9(m):
    """kill -9 the master process right after the replies it gave."""
    m.process.kill()
    m.process.wait()


def queue_order(status, pipeline="main"):
    """The RIDs of a pipeline's pending runs in the order the master will take them,
    from the published entries alone (as a client sorts them)."""
    runs = [(rid, e) for rid, e in status.items()
            if e["pipeline"] == pipeline and e["status"] == "pending"]
    runs.sort(key=lambda kv: (not kv[1].get("immediate", False), -kv[1]["priority"],
                              kv[1]["due_date"] or 0, kv[1]["queue_position"], kv[0]))
    return [rid for rid, _ in runs]


refused = one_line_refusal


async def test_moves_reorder_equal_runs_and_priority_still_goes_first(lab):
    gated = _gated(lab)

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            await s.hold("main")
            r = [await s.submit("main", expid(gated, tag=f"r{i}")) for i in range(5)]
            status = await s.get_status()
            assert queue_order(status) == r  # RID order until someone moves them
            assert [status[rid]["queue_position"] for rid in r] == [float(x) for x in r]
            await s.move(r[3], pos="front")
            assert queue_order(await s.get_status()) == [r[3], r[0], r[1], r[2], r[4]]
            await s.move(r[0], after=r[4])
            assert queue_order(await s.get_status()) == [r[3], r[1], r[2], r[4], r[0]]
            await s.move(r[4], before=r[1])
            assert queue_order(await s.get_status()) == [r[3], r[4], r[1], r[2], r[0]]
            await s.move_batch([r[0], r[2]], pos="front")
            assert queue_order(await s.get_status()) == [r[0], r[2], r[3], r[4], r[1]]
            await s.move(r[3], pos=-1)  # the back, as the queueserver counts
            await s.move(r[1], pos=1)
            assert queue_order(await s.get_status()) == [r[0], r[1], r[2], r[4], r[3]]
            # a new run placed before another; a higher priority still goes first
            placed = await s.submit("main", expid(gated, tag="placed"), before=r[2])
            urgent = await s.submit("main", expid(gated, tag="urgent"), 5)
            await s.move(urgent, pos="back")
            expected = [urgent, r[0], r[1], placed, r[2], r[4], r[3]]
            assert queue_order(await s.get_status()) == expected
            # the master runs them in that order
            await s.release("main")
            await wait_until(lambda: all((rid, "removed") in rec.events for rid in expected),
                             timeout=30)
            started = [rid for rid, st in rec.events if st == "running"]
            assert started == expected

    await main()


async def test_many_moves_to_one_spot_renumber_and_keep_the_order(lab):
    gated = _gated(lab)

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            await s.hold("main")
            first = await s.submit("main", expid(gated, tag="first"))
            last = await s.submit("main", expid(gated, tag="last"))
            # each new run goes right after `first`: the gap halves 80 times
            added = []
            for i in range(80):
                added.append(await s.submit("main", expid(gated, tag=str(i)), after=first))
            assert queue_order(await s.get_status()) == [first, *reversed(added), last]

    await main()


async def test_refusals_name_what_was_wrong_and_change_nothing(lab):
    gated = _gated(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            running = await s.submit("main", expid(gated, gate=gate, tag="running"))
            await wait_until(lambda: (running, "running") in rec.events)
            a = await s.submit("main", expid(gated, tag="a"), due_date=9e9)
            b = await s.submit("main", expid(gated, tag="b"), due_date=9e9)
            other = await s.submit("other", expid(gated, tag="o"), due_date=9e9)
            before = await s.get_status()
            await refused(s.move(running, pos="front"), ValueError, f"RID {running} is",
                          "only pending runs can be moved")
            await refused(s.move(a, before=other), ValueError, f"RID {other} is in pipeline "
                          "other")
            await refused(s.move(a, before=b, after=b), ValueError, "before and after")
            await refused(s.move(a, pos="middle"), ValueError, "pos must be")
            await refused(s.move(a, before=a), ValueError, "itself")
            await refused(s.move(12345, pos="front"), KeyError, "RID 12345")
            await refused(s.move_batch([a, other], pos="front"), ValueError,
                          "different pipelines")
            await refused(s.move_batch([a, a], pos="front"), ValueError, "twice")
            await refused(s.submit("main", expid(gated), before=999), KeyError, "RID 999")
            assert await s.get_status() == before
            # the refused submission took no RID
            assert await s.submit("main", expid(gated, tag="n"), due_date=9e9) == other + 1
            open(gate, "w").close()

    await main()


async def test_positions_survive_a_kill_9(lab):
    gated = _gated(lab)
    m = MasterProcess(lab.root)
    try:
        s = m.client("schedule")
        s.hold("main")
        r = [s.submit("main", expid(gated, tag=str(i))) for i in range(4)]
        s.move(r[2], pos="front")
        s.move_batch([r[0], r[1]], after=r[3])
        order = queue_order(s.get_status())
        assert order == [r[2], r[3], r[0], r[1]]
        s.close_rpc()
        kill_9(m)
    finally:
        m.stop()
    again = MasterProcess(lab.root)
    try:
        s = again.client("schedule")
        assert queue_order(s.get_status()) == order
        new = s.submit("main", expid(gated, tag="new"))  # a new run goes to the back
        assert queue_order(s.get_status()) == [*order, new]
        s.close_rpc()
    finally:
        again.stop()


async def test_clear_deletes_what_has_not_started_in_one_call(lab):
    gated = _gated(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            running = await s.submit("main", expid(gated, gate=gate, tag="running"))
            await wait_until(lambda: (running, "running") in rec.events)
            queued = [await s.submit("main", expid(gated, tag=str(i))) for i in range(5)]
            elsewhere = await s.submit("other", expid(gated, tag="x"), due_date=9e9)
            assert await s.clear("main") == queued
            await wait_until(lambda: all(rid in ends for rid in queued))
            assert {ends[rid].status for rid in queued} == {"deleted"}
            assert set(await s.get_status()) == {running, elsewhere}
            assert await s.clear("nothing-here") == []
            open(gate, "w").close()

    await main()


async def test_clear_is_on_disk_before_it_returns(lab):
    gated = _gated(lab)
    m = MasterProcess(lab.root)
    try:
        s = m.client("schedule")
        s.hold("main")
        rids = [s.submit("main", expid(gated, tag=str(i))) for i in range(20)]
        assert s.clear("main") == rids
        s.close_rpc()
        kill_9(m)
    finally:
        m.stop()
    again = MasterProcess(lab.root)
    try:
        s, history = again.client("schedule"), again.client("history")
        assert s.get_status() == {}
        wait_for(lambda: {r["rid"]: r["status"] for r in history.list(100)}
                 == {rid: "deleted" for rid in rids})
        s.close_rpc()
        history.close_rpc()
    finally:
        again.stop()


async def test_execute_now_goes_ahead_of_a_held_queue_and_waits_when_asked(lab):
    gated = _gated(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            await s.hold("main")
            queued = [await s.submit("main", expid(gated, tag=f"q{i}")) for i in range(2)]
            now = await s.execute_now("main", expid(gated, tag="now"))
            await wait_until(lambda: now in ends)
            assert ends[now].status == "completed"
            assert (await m.history.get(now))["status"] == "completed"
            # busy: refused, unless asked to wait
            blocker = await s.execute_now("main", expid(gated, gate=gate, tag="blocker"))
            await wait_until(lambda: (blocker, "running") in rec.events)
            await refused(s.execute_now("main", expid(gated, tag="no")), ValueError,
                          "pipeline main is busy", f"RID {blocker} is running")
            after = await s.execute_now("main", expid(gated, tag="after"), wait=True)
            await refused(s.move(after, pos="front"), ValueError, "execute_now")
            await wait_until(lambda: m.scheduler.find(after).status.value == "prepare_done")
            # it does not make the running run pause: it waits for it
            assert not m.scheduler.check_pause(blocker)
            open(gate, "w").close()
            await wait_until(lambda: after in ends)
            assert ends[after].status == "completed"
            # (its run stage done, the blocker's analyze overlaps, as for any run)
            assert rec.index(blocker, "run_done") < rec.index(after, "running")
            # the held queue stayed as it was all along
            assert [rec.statuses(rid) for rid in queued] == [["pending"], ["pending"]]
            assert queue_order(await s.get_status()) == queued

    await main()


async def test_hold_after_current_waits_for_the_running_run(lab):
    gated = _gated(lab)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            pipelines = m.notifiers["pipelines"]
            running = await s.submit("main", expid(gated, gate=gate, tag="running"))
            nxt = await s.submit("main", expid(gated, tag="next"))
            await wait_until(lambda: (running, "running") in rec.events)
            await s.hold("main", after_current=True)
            assert pipelines.raw_view == {"main": dict(HELD_ENTRY, held=False,
                                                       stop_pending=True)}
            await s.release("main")  # cancels the pending hold
            assert pipelines.raw_view == {}
            await s.hold("main", after_current=True)
            open(gate, "w").close()
            await wait_until(lambda: (running, "removed") in rec.events)
            await wait_until(lambda: pipelines.raw_view == {"main": HELD_ENTRY})
            assert "running" not in rec.statuses(nxt)
            # nothing running: held at once
            await s.release("main")
            await wait_until(lambda: (nxt, "removed") in rec.events)
            await s.hold("main", after_current=True)
            assert pipelines.raw_view == {"main": HELD_ENTRY}

    await main()


async def test_stop_on_failure_holds_the_pipeline(lab):
    gated = _gated(lab)
    lab.write("repository/failing.py", FAILING)

    async def main():
        async with running_master(lab) as m, schedule_client(m) as s:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            # off (the default, as ARTIQ): a failure changes nothing
            failed = await s.submit("main", expid("repository/failing.py"))
            fine = await s.submit("main", expid(gated, tag="fine"))
            await wait_until(lambda: fine in ends)
            assert ends[failed].status == "failed"
            await s.set_stop_on_failure("main", True)
            failed = await s.submit("main", expid("repository/failing.py"), 1)
            waits = await s.submit("main", expid(gated, tag="waits"))
            await wait_until(lambda: failed in ends)
            await wait_until(lambda: m.notifiers["pipelines"].raw_view.get("main", {})
                             .get("held"))
            assert m.notifiers["pipelines"].raw_view["main"]["stop_on_failure"] is True
            assert "running" not in rec.statuses(waits)
            await s.release("main")
            await wait_until(lambda: waits in ends)
            assert ends[waits].status == "completed"

    await main()


def test_a_locked_queue_refuses_moves_clear_and_execute_now(lab):
    gated = _gated(lab)
    m = MasterProcess(lab.root)
    try:
        s, lock = m.client("schedule"), m.client("lock")
        s.hold("main")
        a, b = (s.submit("main", expid(gated, tag=t)) for t in "ab")
        lock.lock("k1", ["queue"], "calibrating", "ana")
        for call in (lambda **kw: s.move(b, pos="front", **kw),
                     lambda **kw: s.move_batch([b], pos="front", **kw),
                     lambda **kw: s.execute_now("main", expid(gated), **kw),
                     lambda **kw: s.clear("main", **kw),
                     lambda **kw: s.hold("main", True, **kw)):
            with pytest.raises(Exception) as info:
                call()
            assert "ana" in str(info.value) and "calibrating" in str(info.value)
        s.move(b, pos="front", lock_key="k1")
        assert queue_order(s.get_status()) == [b, a]
        assert s.clear("main", lock_key="k1") == [a, b]
        lock.unlock("k1")
        s.close_rpc()
        lock.close_rpc()
    finally:
        m.stop()


def test_the_client_moves_clears_and_runs_now(lab):
    gated = _gated(lab)
    m = MasterProcess(lab.root)
    try:
        m.cli("hold", "main")
        rids = [int(m.cli("submit", gated, "tag=x").stdout.split()[-1]) for _ in range(3)]
        m.cli("move", str(rids[2]), "--front")
        m.cli("move", str(rids[0]), "--after", str(rids[1]))
        s = m.client("schedule")
        assert queue_order(s.get_status()) == [rids[2], rids[1], rids[0]]
        placed = int(m.cli("submit", "--before", str(rids[1]), gated).stdout.split()[-1])
        assert queue_order(s.get_status()) == [rids[2], placed, rids[1], rids[0]]
        shown = m.cli("show", "schedule").stdout
        lines = {int(line.split()[0]): line.split() for line in shown.splitlines()
                 if line.split() and line.split()[0].isdigit()}
        assert [lines[rid][2] for rid in (rids[2], placed, rids[1], rids[0])] == \
            ["1", "2", "3", "4"]
        bad = m.cli("move", str(rids[0]), "--before", "424242", check=False)
        assert bad.returncode != 0 and "RID 424242" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        now = int(m.cli("submit", "--now", gated, "tag=now").stdout.split()[-1])
        history = m.client("history")
        assert history.wait(now, 30)["status"] == "completed"
        history.close_rpc()
        out = m.cli("clear", "main").stdout
        assert out.strip() == f"deleted 4 run(s): RIDs {', '.join(map(str, sorted(rids + [placed])))}"
        m.cli("stop-on-failure", "main", "on")
        m.cli("hold", "--after-current", "other")  # nothing runs there: held at once
        from labpipe.protocol import pyon
        stored = pyon.load_file(lab.path("pipelines.pyon"))
        assert stored["main"]["stop_on_failure"] is True
        assert stored["other"]["held"] is True and stored["other"]["stop_pending"] is False
        s.close_rpc()
    finally:
        m.stop()


def test_held_pipelines_file_keeps_the_new_settings(lab):
    """stop_on_failure survives a restart (pipelines.pyon)."""
    m = MasterProcess(lab.root)
    try:
        s = m.client("schedule")
        s.set_stop_on_failure("main", True)
        s.close_rpc()
    finally:
        m.stop()
    assert os.path.exists(lab.path("pipelines.pyon"))
    again = MasterProcess(lab.root)
    try:
        s = again.client("schedule")
        s.hold("x")
        s.close_rpc()
        from labpipe.protocol import pyon
        stored = pyon.load_file(lab.path("pipelines.pyon"))
        assert stored["main"]["stop_on_failure"] is True
    finally:
        again.stop()


#: Its prepare stage does not end while the master lives.
SLOW_PREPARE = """
import time
from labpipe.experiment import *

class SlowPrepare(EnvExperiment):
    def prepare(self):
        time.sleep(3600)

    def run(self):
        pass
"""


def test_a_run_of_execute_now_not_started_before_a_kill_9_ends_interrupted(lab):
    """It was asked for at once, not for whenever a master runs again: a restart ends
    it in history as interrupted instead of running it."""
    gated = _gated(lab)
    lab.write("repository/slow_prepare.py", SLOW_PREPARE)
    gate = lab.path("gate")
    m = MasterProcess(lab.root)
    try:
        s = m.client("schedule")
        blocker = s.submit("main", expid(gated, gate=gate, tag="blocker"))
        wait_for(lambda: s.get_status()[blocker]["status"] == "running")
        # the next run's prepare never ends, so the pipeline cannot start preparing
        # the run of execute_now either: it is provably not started at the kill
        stuck = s.submit("main", expid("repository/slow_prepare.py"))
        wait_for(lambda: s.get_status()[stuck]["status"] == "preparing")
        later = s.execute_now("main", expid(gated, tag="later"), True)  # waits for it
        assert s.get_status()[later]["immediate"] is True
        assert s.get_status()[later]["status"] == "pending"
        s.close_rpc()
        kill_9(m)
    finally:
        m.stop()
    again = MasterProcess(lab.root)
    try:
        s, history = again.client("schedule"), again.client("history")
        assert later not in s.get_status()
        record = history.wait(later, 30)
        assert record["status"] == "interrupted" and "execute_now" in record["error"]
        s.close_rpc()
        history.close_rpc()
    finally:
        again.stop()
