"""The schedule and the history survive the master: real labpipe-master processes killed
with SIGKILL and restarted in the same lab directory, real LMDB files."""

import os
import signal
import time

import pytest

from labpipe.protocol import pyon
from conftest import FAILING, GATED, TERMINATING, MasterProcess, descendants, expid, wait_for

def gated(tag, gate=""):
    return expid("repository/gated.py", tag=tag, gate=gate, persist=True)


def _kill(master):
    """SIGKILL the master, then the processes it left (workers, forkserver)."""
    orphans = descendants(master.process.pid)
    master.process.send_signal(signal.SIGKILL)
    master.process.wait(timeout=10)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    master.stop()


def _fields(entry):
    """What a schedule entry and a history record share."""
    return {k: entry[k] for k in ("pipeline", "expid", "priority", "due_date", "flush")}


def test_sigkill_restores_pending_runs_and_interrupts_the_running_one(lab):
    lab.experiment("gated", GATED)
    gate = lab.path("gate")
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule:
            running = schedule.submit("main", gated("running", gate))
            wait_for(lambda: schedule.get_status()[running]["status"] == "running")
            prepared = schedule.submit("main", gated("prepared"))
            wait_for(lambda: schedule.get_status()[prepared]["status"] == "prepare_done")
            due = time.time() + 8
            pending = [
                schedule.submit("main", gated("p1"), 0),
                schedule.submit("main", gated("p2"), -1, due),
                schedule.submit("second", gated("s1"), 2, due),
                schedule.submit("second", gated("s2"), 1, due + 0.5, True),
                schedule.submit("main", {"file": "gated.py", "class_name": "Gated",
                                         "arguments": {"tag": "repo"}, "log_level": 30,
                                         "repo_rev": None}, -2),
            ]
            before = schedule.get_status()
        assert all(before[rid]["status"] == "pending" for rid in pending)
    finally:
        _kill(m)

    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule:
            after = schedule.get_status()
            # the pending runs are back with their RIDs and fields, the others are not
            # (the runs due now may already have run: their records are checked below)
            assert set(after) >= set(pending[1:4]) and running not in after
            assert prepared not in after
            for rid in pending:
                if rid in after:
                    assert _fields(after[rid]) == _fields(before[rid]), rid
            new = schedule.submit("main", gated("new"), -5)
            assert new > max(pending)
        with m.client("history") as history:
            record = history.wait(running, 10)
            assert record["status"] == "interrupted"
            assert "running" in record["stages"] and "running" in record["error"]
            assert record["expid"] == gated("running", gate)
            assert history.wait(prepared, 10)["status"] == "interrupted"
            for rid in pending + [new]:
                record = history.wait(rid, 30)
                assert record["status"] == "completed", record
                if rid != new:
                    assert _fields(record) == _fields(before[rid])
                assert "running" in record["stages"]
            # the due runs ran at their due dates, not before
            s1 = history.get(pending[2])
            assert s1["stages"]["running"]["start"] >= due
            # the interrupted run is resubmittable in one call
            again = history.resubmit(running, {"arguments": {"gate": ""}})
            assert history.wait(again, 30)["status"] == "completed"
        with m.client("dataset_db") as datasets:
            for tag in ("p1", "p2", "s1", "s2", "repo", "new"):
                assert isinstance(datasets.get("ended_" + tag), float)
    finally:
        m.stop()


def test_history_statuses_survive_restarts(lab):
    lab.experiment("gated", GATED)
    lab.experiment("failing", FAILING)
    lab.experiment("terminating", TERMINATING)
    gate = lab.path("gate")
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule, m.client("history") as history:
            ok = schedule.submit("main", gated("ok"))
            failed = schedule.submit("main", {"file": "repository/failing.py",
                                              "class_name": None, "arguments": {},
                                              "log_level": 30})
            assert history.wait(ok, 30)["status"] == "completed"
            assert history.wait(failed, 30)["status"] == "failed"
            deleted = schedule.submit("main", gated("deleted", gate))
            wait_for(lambda: schedule.get_status()[deleted]["status"] == "running")
            schedule.delete(deleted)
            assert history.wait(deleted, 30)["status"] == "deleted"
            terminated = schedule.submit("main", {"file": "repository/terminating.py",
                                                  "class_name": None, "arguments": {},
                                                  "log_level": 30})
            wait_for(lambda: schedule.get_status()[terminated]["status"] == "running")
            schedule.request_termination(terminated)
            record = history.wait(terminated, 15)
            assert record["status"] == "terminated", record["error"]
            records = {r["rid"]: r for r in history.list()}
    finally:
        _kill(m)

    m = MasterProcess(lab.root)
    try:
        with m.client("history") as history:
            now = {r["rid"]: r for r in history.list()}
            assert set(now) == set(records)
            for rid, record in records.items():
                assert {k: (v, now[rid].get(k)) for k, v in record.items()
                        if now[rid].get(k) != v} == {}
            assert [r["rid"] for r in history.list()] == [terminated, deleted, failed, ok]
            assert [r["rid"] for r in history.list(2, before_rid=terminated)] == [deleted,
                                                                                  failed]
            ok_record = history.get(ok)
            assert ok_record["error"] is None and ok_record["pipeline"] == "main"
            assert ok_record["results"].startswith("results" + os.sep)
            assert os.path.exists(lab.path(ok_record["results"]))
            assert set(ok_record["stages"]) >= {"preparing", "running", "analyzing"}
            for stage in ok_record["stages"].values():
                assert ok_record["submitted"] <= stage["start"] <= stage["end"]
            assert "the magnet quenched" in history.get(failed)["error"]
            assert "deleting" in history.get(deleted)["stages"]
        with m.client("schedule") as schedule:
            assert schedule.get_status() == {}
        with m.client("history") as history:
            with pytest.raises(Exception, match="12345"):
                history.get(12345)
    finally:
        m.stop()
    assert pyon.load_file(lab.path("last_rid.pyon")) == terminated


def test_sigterm_keeps_pending_runs_too(lab):
    lab.experiment("gated", GATED)
    gate = lab.path("gate")
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule:
            running = schedule.submit("main", gated("running", gate))
            wait_for(lambda: schedule.get_status()[running]["status"] == "running")
            pending = schedule.submit("other", gated("later"), 3, time.time() + 3600)
    finally:
        m.stop()  # SIGTERM: an orderly shutdown
    assert m.process.returncode == 0
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule:
            entry = schedule.get_status()[pending]
            assert (entry["pipeline"], entry["priority"], entry["status"]) == (
                "other", 3, "pending")
            assert running not in schedule.get_status()
            schedule.delete(pending)
        with m.client("history") as history:
            assert history.get(running)["status"] == "interrupted"
            assert history.wait(pending, 15)["status"] == "deleted"
    finally:
        m.stop()
    m = MasterProcess(lab.root)  # the deleted run stays deleted
    try:
        with m.client("schedule") as schedule:
            assert schedule.get_status() == {}
    finally:
        m.stop()


# --- the stores on their own (real LMDB files, no master) -------------------------------

def _run(rid, **fields):
    from labpipe.master.run import Run
    from labpipe.protocol.sync import Notifier
    return Run(rid=rid, pipeline_name=fields.get("pipeline", "main"),
               expid={"file": "x.py", "arguments": {"blob": fields.get("blob", "")}},
               priority=fields.get("priority", 0), due_date=fields.get("due_date"),
               flush=False, schedule=Notifier({}), state_changed=None)


async def test_schedule_store_grows_its_map_and_restores_in_rid_order(tmp_path):
    from labpipe.master.schedule_store import ScheduleStore

    path = str(tmp_path / "schedule.mdb")

    async def fill():
        store = ScheduleStore(path, map_size=64 * 1024)
        for rid in (5, 300, 2):
            await store.record_submission(_run(rid, blob="x" * 100_000, priority=rid))
        run = _run(300, blob="x" * 100_000, priority=300)
        run.stage_times["preparing"] = 12.5
        await store.note_stage(run)
        await store.remove(5)
        await store.note_stage(_run(5))  # gone: not written again
        store.close()
    await fill()
    store = ScheduleStore(path)
    records = store.restore()
    store.close()
    assert [r["rid"] for r in records] == [2, 300]
    assert records[1]["stage_times"] == {"preparing": 12.5}
    assert records[0]["priority"] == 2 and len(records[0]["expid"]["arguments"]["blob"]) \
        == 100_000


async def test_history_notifier_keeps_the_newest_and_list_pages(tmp_path):
    from labpipe.master import history as history_module
    from labpipe.master.history import History
    from labpipe.master.run import RunEnd

    async def main():
        h = History(str(tmp_path / "history.mdb"), str(tmp_path))
        old = history_module.NOTIFIER_SIZE
        history_module.NOTIFIER_SIZE = 5
        try:
            for rid in range(12):
                run = _run(rid)
                run.stage_times.update({"preparing": 1.0 + rid, "running": 2.0 + rid})
                await h.on_run_end(run, RunEnd(
                    "failed" if rid % 2 else "completed", error="boom" if rid % 2 else None,
                    results=str(tmp_path / "results" / f"{rid}.h5")))
        finally:
            history_module.NOTIFIER_SIZE = old
        assert sorted(h.notifier.raw_view) == [7, 8, 9, 10, 11]
        assert [r["rid"] for r in await h.list(3)] == [11, 10, 9]
        assert [r["rid"] for r in await h.list(3, before_rid=2)] == [1, 0]
        assert [r["rid"] for r in await h.list(2, before_rid=100)] == [11, 10]
        assert await h.list(3, before_rid=0) == []
        record = await h.get(3)  # from the file, not the notifier
        assert record["status"] == "failed" and record["error"] == "boom"
        assert record["results"] == os.path.join("results", "3.h5")
        assert record["stages"]["preparing"] == {"start": 4.0, "end": 5.0, "spent": 1.0}
        assert record["stages"]["running"]["start"] == 5.0
        try:
            await h.wait(99, 0.1)
        except KeyError as e:
            assert "99" in str(e)
        else:
            raise AssertionError("wait on an unknown RID")
        # an interrupted report never overwrites a run that had ended
        await h.on_run_end(_run(3), RunEnd("interrupted", error="master stopped"))
        assert (await h.get(3))["status"] == "failed"
        h.close()
        h = History(str(tmp_path / "history.mdb"), str(tmp_path))
        assert len(h.notifier.raw_view) == 12 and (await h.get(0))["status"] == "completed"
        h.close()
    await main()


async def test_history_without_a_scheduler_refuses_resubmit_saying_why(tmp_path):
    from labpipe.master.history import History
    from labpipe.master.run import RunEnd

    async def main():
        h = History(str(tmp_path / "history.mdb"), str(tmp_path))
        try:
            await h.on_run_end(_run(1), RunEnd("completed"))
            with pytest.raises(RuntimeError, match="no scheduler"):
                await h.resubmit(1)
        finally:
            h.close()
    await main()


async def test_stage_notes_piling_up_become_one_write(tmp_path):
    import asyncio
    import threading
    from labpipe.master.schedule_store import ScheduleStore, rid_key

    async def main():
        store = ScheduleStore(str(tmp_path / "schedule.mdb"))
        run, other = _run(1), _run(2)
        await store.record_submission(run)
        await store.record_submission(other)
        writes = []
        real = store.file.write_now
        gate = threading.Event()

        def slow_first(ops):
            writes.append(ops)
            if len(writes) == 1:
                gate.wait(10)
            real(ops)
        store.file.write_now = slow_first
        slow = asyncio.create_task(store.file.write([(b"meta/slow", b"1")]))
        while not writes:  # the slow write is in progress
            await asyncio.sleep(0.005)
        tasks = []
        for stage in ("preparing", "prepare_done", "running"):
            run.stage_times[stage] = len(tasks)
            tasks.append(asyncio.create_task(store.note_stage(run)))
            await asyncio.sleep(0)
        tasks.append(asyncio.create_task(store.note_stage(other)))
        tasks.append(asyncio.create_task(store.remove(2)))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(slow, *tasks)
        # what piled up is one transaction: run 1 once, with all three stages; run 2
        # removed only (its note dropped)
        assert len(writes) == 2
        assert [key for key, _ in writes[1]] == [rid_key(1), rid_key(2)]
        assert writes[1][1][1] is None
        records = store.restore()
        assert [r["rid"] for r in records] == [1]
        assert set(records[0]["stage_times"]) == {"preparing", "prepare_done", "running"}
        store.close()
    await main()


def test_a_stored_record_of_a_run_history_has_is_dropped_at_restore(lab):
    """An ended run's schedule record goes with a later write (remove_soon): one that
    outlived the master (killed in between) is dropped at restore, and the run's
    history record stays as it was (not 'interrupted', not run again)."""
    lab.write("repository/gated.py", GATED)
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule, m.client("history") as history:
            rid = schedule.submit("main", expid("repository/gated.py", tag="x"))
            assert history.wait(rid, 30)["status"] == "completed"
            record = history.get(rid)
    finally:
        m.stop()
    # a record as the store may hold it for a run that ended without a stage of its
    # own (a queue_stop instruction), as if its removal never got to disk: put back
    # as pending, it would run a second time
    from labpipe.master.schedule_store import ScheduleStore, rid_key
    store = ScheduleStore(lab.path("schedule.mdb"))
    stale = dict(record, stage_times={"pending": record["submitted"]})
    for key in ("status", "stages", "ended", "error", "results", "content", "class_name",
                "analyzed_on"):
        stale.pop(key, None)
    store.file.write_now([(rid_key(rid), pyon.encode(stale).encode("utf-8"))])
    store.close()
    lab.write("labpipe.toml", '[master]\nhold = ["main"]\n')  # a run put back would wait
    again = MasterProcess(lab.root)
    try:
        with again.client("schedule") as schedule, again.client("history") as history:
            assert schedule.get_status() == {}
            assert history.get(rid)["status"] == "completed"
    finally:
        again.stop()
    store = ScheduleStore(lab.path("schedule.mdb"))
    try:
        assert store.restore() == []  # and the stale record is gone from disk
    finally:
        store.close()
