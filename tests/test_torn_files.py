"""Torn small state files (a crash between create and write, a full disk): the master
starts, with one warning line per file, recovering what the LMDB stores know."""

import logging
import os
import shutil

import pytest

from conftest import expid, run_ends, running_master, wait_until
from labpipe.master import process_records
from labpipe.master.repository import hooks
from labpipe.master.rid import RIDCounter
from labpipe.protocol import pyon

QUICK = """
class Quick(EnvExperiment):
    def run(self):
        pass
"""

#: kinds of damage: (name, bytes written in place of the file)
DAMAGE = {
    "empty": b"",
    "truncated": None,  # the first half of the good content
    "garbage": b"\xff\xfe\x00{[(garbage",
}


def damage(path, kind, wrong_type=None):
    if kind == "wrong type":
        pyon.store_file(path, wrong_type)
        return
    data = DAMAGE[kind]
    if data is None:
        with open(path, "rb") as f:
            good = f.read()
        data = good[:max(1, len(good) // 2)]
    with open(path, "wb") as f:
        f.write(data)


def warnings_about(caplog, name):
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and name in r.getMessage()]


async def _submit_and_finish(m, count):
    ends = run_ends(m.scheduler)
    rids = [await m.scheduler.submit("main", expid("repository/quick.py")) for _ in range(count)]
    await wait_until(lambda: all(rid in ends for rid in rids), timeout=30)
    await wait_until(lambda: all(rid in m.history.notifier.raw_view for rid in rids))
    return rids


KINDS = ["empty", "truncated", "garbage", "wrong type"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lost_schedule", [False, True])
async def test_torn_last_rid_is_recovered_from_the_stores(lab, caplog, kind, lost_schedule):
    lab.experiment("quick", QUICK)

    async def scenario():
        async with running_master(lab) as m:
            before = await _submit_and_finish(m, 3)
        damage(lab.path("last_rid.pyon"), kind, wrong_type="12")
        # a truncated integer may still be one (a lower RID): harmless, not detectable
        expected_warnings = 0 if _is_int_file(lab.path("last_rid.pyon")) else 1
        if lost_schedule:  # then only history.mdb knows the RIDs given out
            shutil.rmtree(lab.path("schedule.mdb"), ignore_errors=True)
            if os.path.exists(lab.path("schedule.mdb")):
                os.remove(lab.path("schedule.mdb"))
        caplog.clear()
        async with running_master(lab) as m:
            after = await _submit_and_finish(m, 1)
        assert after[0] > max(before)
        assert len(warnings_about(caplog, "last_rid.pyon")) == expected_warnings
    await scenario()


def _is_int_file(path):
    try:
        value = pyon.load_file(path)
    except Exception:
        return False
    return isinstance(value, int) and not isinstance(value, bool)


@pytest.mark.parametrize("kind", KINDS)
def test_torn_rid_file_alone_gives_one_warning(tmp_path, caplog, kind):
    path = str(tmp_path / "last_rid.pyon")
    pyon.store_file(path, -1234)  # half of it, "-1", does not parse as a RID
    damage(path, kind, wrong_type=[1, 2])
    with caplog.at_level(logging.WARNING):
        assert RIDCounter(path).last == -1
    assert len(warnings_about(caplog, "last_rid.pyon")) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_torn_pipeline_states_start_with_none_held(lab, caplog, kind):
    lab.experiment("quick", QUICK)

    async def scenario():
        async with running_master(lab) as m:
            await m.scheduler.queue.hold("main")
        assert os.path.exists(lab.path("pipelines.pyon"))
        damage(lab.path("pipelines.pyon"), kind, wrong_type=[1, 2, 3])
        caplog.clear()
        async with running_master(lab) as m:
            assert not m.scheduler.queue.states.is_held("main")
            await _submit_and_finish(m, 1)  # the pipeline works
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING
                 and "pipelines.pyon" in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    await scenario()


@pytest.mark.parametrize("kind", KINDS)
async def test_torn_process_records_give_one_warning(lab, caplog, kind):
    lab.experiment("quick", QUICK)
    path = lab.path(process_records.FILE_NAME)
    pyon.store_file(path, [{"pgid": 999999, "start": 1}])
    damage(path, kind, wrong_type={"pgid": 5})

    async def scenario():
        async with running_master(lab) as m:
            await _submit_and_finish(m, 1)
    caplog.clear()
    await scenario()
    assert len(warnings_about(caplog, process_records.FILE_NAME)) == 1
    assert isinstance(pyon.load_file(path), list)  # rewritten whole


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_torn_hook_of_ours_is_rewritten(tmp_path, caplog, kind):
    hooks_dir = str(tmp_path)
    command = hooks.notify_command(3251)
    hooks.install_hook(hooks_dir, True, command)
    path = os.path.join(hooks_dir, hooks.hook_name(True))
    damage(path, kind)
    if kind == "truncated":  # keep the marker line, lose the command
        with open(path, "w") as f:
            f.write(hooks.hook_script(command)[:len(hooks.MARKER) + 40])
    caplog.clear()
    result = hooks.install_hook(hooks_dir, True, command)
    assert result.status in (hooks.HookStatus.INSTALLED, hooks.HookStatus.UPDATED)
    with open(path) as f:
        assert f.read() == hooks.hook_script(command)
    assert os.access(path, os.X_OK)


async def test_every_small_state_file_is_written_atomically(lab):
    """No state file is ever written in place: each write goes to a temporary file
    that replaces it (a crash leaves the old content or the new one)."""
    import labpipe.protocol.atomic as atomic
    lab.experiment("quick", QUICK)
    replaced = []
    original = os.replace

    def spy(src, dst, *args, **kwargs):
        replaced.append(os.path.basename(dst))
        return original(src, dst, *args, **kwargs)

    opened_in_place = []
    real_open = open

    def open_spy(file, mode="r", *args, **kwargs):
        name = os.path.basename(str(file))
        if any(c in mode for c in "wax+") and name in STATE_FILES:
            opened_in_place.append(name)
        return real_open(file, mode, *args, **kwargs)

    import builtins
    atomic.os.replace = spy
    builtins.open = open_spy
    try:
        async def scenario():
            async with running_master(lab) as m:
                await m.scheduler.queue.hold("other")
                await _submit_and_finish(m, 2)
        await scenario()
    finally:
        atomic.os.replace = original
        builtins.open = real_open
    assert opened_in_place == []
    assert {"last_rid.pyon", "pipelines.pyon", process_records.FILE_NAME} <= set(replaced)


STATE_FILES = {"last_rid.pyon", "pipelines.pyon", process_records.FILE_NAME}
