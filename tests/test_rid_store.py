"""RIDs made durable by the schedule store's commit: the store keeps the highest RID
submitted (``meta/last_rid``) in the submission's transaction, ``last_rid.pyon`` is
written atomically but not fsynced, and a restarted master resumes after both. Real
LMDB files; a real master in the test's event loop."""

import logging
import os
import time

import pytest

from conftest import MasterProcess, running_master, wait_until
from labpipe.master.rid import RIDCounter
from labpipe.master.schedule_store import LAST_RID_KEY, ScheduleStore
from labpipe.protocol import atomic, pyon

NOOP = """
class Noop(EnvExperiment):
    def run(self):
        pass
"""

LATER = 3600.0  # a due date this far ahead keeps a run pending


def noop():
    return {"file": "repository/noop.py", "class_name": None, "arguments": {},
            "log_level": 30}


def _stored_last_rid(store):
    """The meta entry as committed in the LMDB file (not the in-memory copy)."""
    data = store.file.read_now(lambda txn: txn.get(LAST_RID_KEY))
    return None if data is None else pyon.decode(bytes(data).decode("utf-8"))


def _unreadable_record_errors(caplog):
    return [r for r in caplog.records
            if r.levelno >= logging.ERROR and "cannot read the record" in r.getMessage()]


async def _delete_all(master, rids):
    """Delete the runs and wait until they are out of the schedule and the store."""
    for rid in rids:
        await master.scheduler.delete(rid)
    await wait_until(lambda: not master.scheduler.notifier.raw_view
                     and not master.scheduler.ending)


async def test_rid_counter_fsyncs_only_when_durable(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path",
                        lambda path, directory=False: (synced.append(path),
                                                       real(path, directory)))
    path = str(tmp_path / "last_rid.pyon")

    async def main():
        counter = RIDCounter(path)
        assert await counter.next() == 0
        assert len(synced) == 2  # the file and the folder
        assert pyon.load_file(path) == 0
        del synced[:]
        assert await counter.next(durable=False) == 1
        await counter.flush()  # written behind, (atomically) all the same
        assert synced == []
        assert pyon.load_file(path) == 1
        # no temporary file left behind
        assert sorted(os.listdir(tmp_path)) == ["last_rid.pyon"]
    await main()
    assert RIDCounter(path).last == 1


async def test_submits_commit_the_last_rid_with_the_record(lab, monkeypatch):
    lab.experiment("noop", NOOP)
    writes = []  # (path, fsync) of every pyon.store_file
    real = pyon.store_file
    monkeypatch.setattr(pyon, "store_file", lambda path, obj, fsync=True: (
        writes.append((os.path.basename(path), fsync)), real(path, obj, fsync))[1])

    async def main():
        async with running_master(lab) as m:
            store = m.schedule_store
            assert store.last_rid == -1 and _stored_last_rid(store) is None
            rids = []
            for i in range(3):
                rids.append(await m.scheduler.submit("main", noop(),
                                                     due_date=time.time() + LATER))
                # on disk, with the record, when submit returns; last_rid.pyon
                # follows behind
                assert _stored_last_rid(store) == store.last_rid == rids[-1]
                await m.scheduler.rid_counter.flush()
                assert pyon.load_file(lab.path("last_rid.pyon")) == rids[-1]
            assert rids == sorted(set(rids))
            # removing the runs' records keeps the meta entry
            await _delete_all(m, rids)
            return rids
    rids = await main()
    # the store's commit made each RID durable: last_rid.pyon was not fsynced
    assert [w for w in writes if w[0] == "last_rid.pyon"] == [("last_rid.pyon", False)] * 3
    store = ScheduleStore(lab.path("schedule.mdb"))
    try:
        assert store.restore() == []
        assert store.last_rid == _stored_last_rid(store) == rids[-1]
    finally:
        store.close()


async def test_a_burst_of_rids_costs_one_write_behind(tmp_path, monkeypatch):
    """RIDs made durable by the store: last_rid.pyon is written behind them, the
    latest RID once per write, not once per RID."""
    writes = []
    real = pyon.store_file
    monkeypatch.setattr(pyon, "store_file", lambda path, obj, fsync=True: (
        writes.append((obj, fsync)), real(path, obj, fsync))[1])
    path = str(tmp_path / "last_rid.pyon")
    counter = RIDCounter(path)
    assert [await counter.next(durable=False) for _ in range(100)] == list(range(100))
    await counter.flush()
    assert pyon.load_file(path) == 99
    assert 1 <= len(writes) <= 2 and writes[-1] == (99, False)
    assert RIDCounter(path).last == 99


@pytest.mark.parametrize("lost", ["smaller", "deleted"])
async def test_restart_resumes_after_the_store_when_last_rid_pyon_lost_writes(lab, lost,
                                                                         caplog):
    """No run left in the store: only its meta entry knows the RIDs given out."""
    lab.experiment("noop", NOOP)

    async def first():
        async with running_master(lab) as m:
            rids = [await m.scheduler.submit("main", noop(), due_date=time.time() + LATER)
                    for _ in range(4)]
            await _delete_all(m, rids)
            return rids
    given = await first()
    store = ScheduleStore(lab.path("schedule.mdb"))
    try:
        assert store.restore() == []  # nothing for restore() to reserve RIDs from
    finally:
        store.close()
    # a power loss took the last (unsynced) writes of last_rid.pyon, or all of it
    if lost == "smaller":
        pyon.store_file(lab.path("last_rid.pyon"), given[0])
    else:
        os.unlink(lab.path("last_rid.pyon"))

    async def second():
        caplog.set_level(logging.INFO)
        async with running_master(lab) as m:
            return await m.scheduler.submit("main", noop(), due_date=time.time() + LATER)
    rid = await second()
    assert rid > max(given)
    assert pyon.load_file(lab.path("last_rid.pyon")) == rid
    assert _unreadable_record_errors(caplog) == []


async def test_restore_skips_the_meta_entry_and_keeps_it(tmp_path, caplog):
    from test_persistence import _run
    path = str(tmp_path / "schedule.mdb")

    async def fill():
        store = ScheduleStore(path)
        for rid in (3, 7, 5):  # a lower RID committed last does not lower last_rid
            await store.record_submission(_run(rid))
        assert store.last_rid == 7
        await store.remove(7)
        store.close()
    await fill()
    caplog.set_level(logging.DEBUG)
    store = ScheduleStore(path)
    try:
        assert [r["rid"] for r in store.restore()] == [3, 5]
        assert store.last_rid == _stored_last_rid(store) == 7
    finally:
        store.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_stopping_master_writes_the_last_rid_behind_it(lab, monkeypatch):
    """However long the write behind waits, a master that stops leaves the last RID
    it gave out in last_rid.pyon (SIGTERM, Ctrl-C: the scheduler's stop flushes)."""
    from labpipe.master import rid as rid_module
    monkeypatch.setattr(rid_module, "WRITE_BEHIND", 3600.0)
    lab.experiment("noop", NOOP)
    async with running_master(lab) as m:
        rids = [await m.scheduler.submit("main", noop(), due_date=time.time() + LATER)
                for _ in range(5)]
        # the first was written at once, the rest wait behind it
        await wait_until(lambda: os.path.exists(lab.path("last_rid.pyon")))
        assert pyon.load_file(lab.path("last_rid.pyon")) < rids[-1]
        for rid in rids:
            await m.scheduler.delete(rid)
    assert pyon.load_file(lab.path("last_rid.pyon")) == rids[-1]


def test_sigterm_leaves_the_last_rid_of_a_burst_in_the_file(lab):
    """A burst of submits over the wire, then SIGTERM at once: the writes behind
    the burst are flushed before the master exits."""
    lab.experiment("noop", NOOP)
    m = MasterProcess(lab.root)
    try:
        with m.client("schedule") as schedule:
            schedule.hold("main")
            rids = [schedule.submit("main", noop()) for _ in range(20)]
    finally:
        m.stop()
    assert m.process.returncode == 0, m.report()
    assert pyon.load_file(lab.path("last_rid.pyon")) == rids[-1]
