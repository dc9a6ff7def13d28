"""The master's lifetime is one ``async with``: a start that fails half-way leaves
nothing running, a failing task is logged with its context, and the exit ends every
task, port and process the master started (real processes and sockets)."""

import asyncio
import logging
import os
import socket

import pytest

from conftest import (descendants, expid, master_options, run_ends, running_master,
                      wait_gone, wait_until)
from labpipe.master.assembly import Master, MasterFailed
from labpipe.master.process_records import FILE_NAME as PROCESSES_FILE
from labpipe.protocol import pyon

FAR = 9e9  # a due date that keeps a run pending for good

SLEEPER = """
import time

class Sleeper(EnvExperiment):
    def run(self):
        self.set_dataset("sleeper.up", True, broadcast=True)
        while True:
            time.sleep(0.01)
"""

QUICK = """
class Quick(EnvExperiment):
    def run(self):
        self.set_dataset("quick.done", True, broadcast=True)
"""


def other_tasks():
    return asyncio.all_tasks() - {asyncio.current_task()}


def assert_closed(port):
    """Nothing listens on 127.0.0.1:port any more."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def started_since(before):
    """The processes below this one that were not there before."""
    return set(descendants(os.getpid())) - before


async def test_a_part_that_fails_to_start_leaves_nothing_running(lab):
    """The control port is taken: the parts started before it (launcher with its
    template and spare, databases, the other three ports, the scheduler with a restored
    pipeline's stage loops) are stopped, in reverse order, and the lab is free again."""
    lab.experiment("quick", QUICK)

    async def main():
        async with running_master(lab) as m:
            rid = await m.scheduler.submit("main", expid("repository/quick.py"), due_date=FAR)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = set(descendants(os.getpid()))
        master = Master(master_options(lab, port_control=taken.getsockname()[1]))
        try:
            with pytest.raises(OSError):
                async with master:
                    pytest.fail("the master started on a port in use")
        finally:
            taken.close()
        assert not other_tasks()
        assert set(master.servers) == {"notify", "logging", "broadcast"}  # had started
        for server, _ in master.servers.values():
            assert_closed(server.port)
        started = started_since(before)
        assert master.launcher.closed
        assert wait_gone(started, 10) == []
        assert pyon.load_file(lab.path(PROCESSES_FILE)) == []
        # the lock is released and the restored run is still pending
        async with running_master(lab) as m:
            assert m.scheduler.notifier.raw_view[rid]["status"] == "pending"
    await main()


async def test_a_failing_task_is_logged_with_its_context_and_survived(lab, caplog):
    """A supervised task of the scheduler that raises is logged with the component,
    the RID and the traceback; the master goes on running runs."""
    lab.experiment("quick", QUICK)

    async def fails():
        raise RuntimeError("task boom")

    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            task = m.scheduler.tasks.spawn(fails(), "closing the worker", context="RID 41")
            await asyncio.wait([task])
            with pytest.raises(RuntimeError):
                task.result()  # the exception stays with the task for its awaiter
            rid = await m.scheduler.submit("main", expid("repository/quick.py"))
            await wait_until(lambda: rid in ends, timeout=30)
            assert ends[rid].status == "completed"
    with caplog.at_level(logging.ERROR):
        await main()
    [record] = [r for r in caplog.records if "task boom" in str(r.exc_info)]
    assert record.name == "labpipe.master.scheduler"
    assert record.getMessage() == "RID 41: closing the worker failed"
    assert record.exc_info[1].args == ("task boom",)


async def test_the_stage_loops_are_named_by_their_pipeline(lab):
    lab.experiment("quick", QUICK)

    async def main():
        async with running_master(lab) as m:
            await m.scheduler.submit("side", expid("repository/quick.py"), due_date=FAR)
            names = {t.get_name() for t in m.scheduler.tasks.tasks}
            assert {"pipeline side: _prepare_loop", "pipeline side: _run_loop",
                    "pipeline side: _analyze_loop"} <= names
    await main()


async def test_a_fatal_task_failing_stops_the_master_in_order(lab, caplog):
    """A task the master cannot run without fails: the block inside ``async with`` is
    cancelled, the master stops (its running run's worker closed, every process ended)
    and ``MasterFailed`` names the task."""
    lab.experiment("sleeper", SLEEPER)
    reached_end = []

    async def fails():
        raise RuntimeError("loop boom")

    async def main():
        before = set(descendants(os.getpid()))
        with pytest.raises(MasterFailed, match="the test loop failed: loop boom"):
            async with running_master(lab, own_launcher=True) as m:
                ends = run_ends(m.scheduler)
                rid = await m.scheduler.submit("main", expid("repository/sleeper.py"))
                await wait_until(lambda: "sleeper.up" in m.dataset_db.data.raw_view,
                                 timeout=30)
                m.tasks.spawn(fails(), "the test loop", fatal=True)
                await asyncio.Event().wait()  # forever, unless cancelled
                reached_end.append(True)
        assert not reached_end
        assert rid not in ends  # stopped, not ended: a restart reports it interrupted
        assert not other_tasks()
        assert wait_gone(started_since(before), 10) == []
        for name in ("control", "notify", "logging", "broadcast"):
            assert_closed(m.port(name))
    with caplog.at_level(logging.ERROR):
        await main()
    [failure] = [r for r in caplog.records if r.getMessage() == "master: the test loop failed"]
    assert failure.exc_info[1].args == ("loop boom",)
    assert any(r.levelno == logging.CRITICAL and "the master stops" in r.getMessage()
               for r in caplog.records)


async def test_the_exit_ends_every_task_port_and_process(lab):
    """A master with its own launcher, a run running and examiners up: leaving the
    block leaves no task, no listening port and no process it started; its process
    records are cleared and the lab lock released."""
    lab.experiment("sleeper", SLEEPER)

    async def main():
        before = set(descendants(os.getpid()))
        async with running_master(lab, own_launcher=True) as m:
            await m.scheduler.submit("main", expid("repository/sleeper.py"))
            await wait_until(lambda: "sleeper.up" in m.dataset_db.data.raw_view,
                             timeout=30)
            started = started_since(before)
            # template, spare, the run's worker, examiners
            assert len(started) >= 4, started
            recorded = {r["pgid"] for r in pyon.load_file(lab.path(PROCESSES_FILE))}
            assert m.launcher.template().pid in recorded
            ports = {name: m.port(name) for name in m.servers}
        assert not other_tasks()
        assert wait_gone(started, 10) == []
        for port in ports.values():
            assert_closed(port)
        assert pyon.load_file(lab.path(PROCESSES_FILE)) == []
        async with running_master(lab):  # the lock was released
            pass
    await main()
