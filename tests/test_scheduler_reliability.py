"""No stranded runs, no half-done ends, ARTIQ delete semantics, bounded error text, and
edits that either apply whole or change nothing (issues 12, 13, 14)."""

import asyncio
import logging
import math
import os

import h5py
import pytest

from conftest import (ScheduleRecorder, expid, run_ends, running_master,
                      session_launcher, wait_until)
from labpipe.master.run import MAX_ERROR_CHARS
from labpipe.worker.forkserver import ForkServerError

QUICK = """
class Quick(EnvExperiment):
    def build(self):
        self.setattr_argument("tag", StringValue("t"))

    def run(self):
        self.set_dataset("ran." + self.tag, True, broadcast=True)
"""

RAISES = """
class Raises(EnvExperiment):
    def run(self):
        raise ValueError("x" * 100_000 + "END")
"""


@pytest.mark.parametrize("error", [OSError(11, "Resource temporarily unavailable"),
                                   ForkServerError("the fork server is gone")])
async def test_worker_that_cannot_start_ends_the_run(lab, monkeypatch, error):
    """An exception other than WorkerError while starting a worker fails that run
    (its error in history) and a later flush run is not blocked."""
    quick = lab.experiment("quick", QUICK)
    calls = []

    def failing_once(real):
        def take():
            calls.append(1)
            if len(calls) == 1:
                raise error  # process creation failing: the system edge
            return real()
        return take
    # a worker comes from a ready spare (never blocks) or is forked in a thread
    launcher = session_launcher  # the one running_master's master borrows
    monkeypatch.setattr(launcher, "take_worker", failing_once(launcher.take_worker))
    monkeypatch.setattr(launcher, "take_ready_worker",
                        failing_once(launcher.take_ready_worker))

    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            failing = await m.scheduler.submit("main", expid(quick, tag="a"))
            flushing = await m.scheduler.submit("main", expid(quick, tag="b"), flush=True)
            await wait_until(lambda: failing in ends and flushing in ends, timeout=20)
            assert ends[failing].status == "failed"
            assert type(error).__name__ in ends[failing].error
            assert ends[flushing].status == "completed"
            record = await m.history.wait(failing, 10)
            assert record["status"] == "failed" and str(error) in record["error"]
            assert m.scheduler.notifier.raw_view == {}

    await main()


async def test_raising_listener_leaves_no_run_half_ended(lab):
    """A schedule listener that raises on every mod: runs still end with a history
    record, and a restarted master does not report them interrupted."""
    quick = lab.experiment("quick", QUICK)

    def broken(mod):
        raise RuntimeError("listener bug")

    async def main():
        async with running_master(lab) as m:
            m.scheduler.notifier.add_listener(broken)
            rids = [await m.scheduler.submit("main", expid(quick, tag=str(i)))
                    for i in range(2)]
            for rid in rids:
                assert (await m.history.wait(rid, 20))["status"] == "completed"
            await wait_until(lambda: not m.scheduler.ending)
        async with running_master(lab) as m:
            for rid in rids:
                assert (await m.history.get(rid))["status"] == "completed"
            assert m.scheduler.notifier.raw_view == {}

    await main()


async def test_delete_and_terminate_ignore_rids_not_in_the_schedule(lab):
    """ARTIQ semantics: the dashboard deletes rows that may have just left."""
    quick = lab.experiment("quick", QUICK)

    async def main():
        async with running_master(lab) as m:
            rid = await m.scheduler.submit("main", expid(quick))
            await m.history.wait(rid, 20)
            for target in (rid, 123456):
                assert await m.scheduler.delete(target) is None
                assert await m.scheduler.request_termination(target) is None
            assert (await m.history.get(rid))["status"] == "completed"

    await main()


async def test_long_error_text_is_cut_in_history_and_kept_in_results(lab):
    raises = lab.experiment("raises", RAISES)

    async def main():
        async with running_master(lab) as m:
            rid = await m.scheduler.submit("main", expid(raises))
            record = await m.history.wait(rid, 20)
            assert record["status"] == "failed"
            assert len(record["error"]) < MAX_ERROR_CHARS + 200
            assert "characters cut; the full text is in the results file" in record["error"]
            assert m.history.notifier.raw_view[rid]["error"] == record["error"]
            with h5py.File(os.path.join(lab.root, record["results"])) as f:
                full = f["error"][()].decode()
            assert "x" * 100_000 + "END" in full

    await main()


async def test_failed_change_changes_nothing_and_nan_is_refused(lab):
    quick = lab.experiment("quick", QUICK)

    async def main():
        async with running_master(lab) as m:
            s = m.scheduler
            rec = ScheduleRecorder(s.notifier)
            rid = await s.submit("main", expid(quick, tag="a"), due_date=9e9)
            before = dict(s.get_status()[rid])
            events = list(rec.events)
            for kwargs, exc in [({"arguments": {"tag": object()}}, ValueError),
                                ({"priority": 3, "arguments": {"tag": object()}}, ValueError),
                                ({"due_date": math.nan}, ValueError),
                                ({"due_date": math.inf, "priority": 4}, ValueError)]:
                with pytest.raises(exc):
                    await s.change(rid, **kwargs)
            assert s.get_status()[rid] == before
            assert rec.events == events
            with pytest.raises(ValueError, match="due_date"):
                await s.submit("main", expid(quick), due_date=math.nan)
            with pytest.raises(ValueError, match="due_date"):
                await s.submit("main", expid(quick), due_date=-math.inf)
            await s.change(rid, priority=2, arguments={"tag": "b"})
            assert s.get_status()[rid]["priority"] == 2
        # the refused values never reached the disk either
        async with running_master(lab) as m:
            entry = m.scheduler.get_status()[rid]
            assert entry["priority"] == 2 and entry["due_date"] == 9e9
            assert entry["expid"]["arguments"] == {"tag": "b"}

    await main()


async def test_mods_are_published_only_once_on_disk(lab):
    """At the moment a subscriber could see a change (the notifier's listeners run), the
    LMDB file already holds it: priority changes, deletions, persistent datasets."""
    from labpipe.master.schedule_store import rid_key
    from labpipe.protocol import pyon
    quick = lab.experiment("quick", QUICK)

    async def main():
        async with running_master(lab) as m:
            s, store, db = m.scheduler, m.scheduler.store, m.dataset_db
            seen = []

            def stored(rid):
                data = store.file.read_now(lambda txn: txn.get(rid_key(rid)))
                return pyon.decode(bytes(data).decode())

            def on_schedule(mod):
                if mod["action"] == "setitem" and mod["key"] == "priority":
                    seen.append(("priority", stored(mod["path"][0])["priority"]))
                if mod["action"] == "setitem" and mod["value"] == "deleting":
                    seen.append(("deleting", "deleting" in stored(mod["path"][0])
                                 ["stage_times"]))

            def on_dataset(mod):
                if mod["path"] == [] and mod["action"] == "setitem":
                    data = db._file.read_now(lambda txn: txn.get(mod["key"].encode()))
                    on_disk = None if data is None else pyon.decode(bytes(data).decode())
                    seen.append((mod["key"], mod["value"][1],
                                 on_disk and on_disk["value"]))
            s.notifier.add_listener(on_schedule)
            db.data.add_listener(on_dataset)
            rid = await s.submit("main", expid(quick), due_date=9e9)
            await s.change(rid, priority=4)
            await s.delete(rid)
            # persistent and not, interleaved: published in call order, each on disk
            import asyncio
            await asyncio.gather(*(db.set(f"k{i % 2}", i, persist=i % 2 == 0)
                                   for i in range(6)))
            assert seen[:2] == [("priority", 4), ("deleting", True)]
            # in call order; a persistent value on disk when published (or a later one:
            # sets arriving together share one commit); the others never on disk
            assert [(key, value) for key, value, _ in seen[2:]] == [
                (f"k{i % 2}", i) for i in range(6)]
            for key, value, on_disk in seen[2:]:
                if key == "k1":
                    assert on_disk is None
                else:
                    assert on_disk is not None and on_disk >= value, (key, value, on_disk)

    await main()


async def test_a_background_task_that_fails_is_logged_with_its_traceback(lab, caplog):
    """What the scheduler runs in the background (ends of runs, stage notes) never fails
    silently: the exception is logged, with its traceback."""
    async def fails():
        raise RuntimeError("background boom")

    async def main():
        async with running_master(lab) as m:
            task = m.scheduler.tasks.spawn(fails())
            await asyncio.wait([task])
            await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    with caplog.at_level(logging.ERROR, logger="labpipe.master.scheduler"):
        await main()
    failures = [r for r in caplog.records if "background task" in r.getMessage()]
    assert len(failures) == 1 and "fails" in failures[0].getMessage()
    assert failures[0].exc_info[1].args == ("background boom",)
