"""Bluesky plans end to end: a real master in the test's event loop, real workers, a
real RunEngine on the ophyd.sim devices of the example lab's device_db.py, the results
files read back with h5py."""

import asyncio
import os

import h5py
import numpy
import pytest

from conftest import STAMP, ScheduleRecorder, expid, run_ends, running_master, wait_until
from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol import pyon
from labpipe.bluesky.pausing import CHECK_INTERVAL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example_lab(lab):
    """The lab fixture with the example lab's device_db.py and repository/scan.py."""
    for relpath in ("device_db.py", "repository/scan.py"):
        with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
            lab.write(relpath, f.read())


def pyon_text(dataset):
    return pyon.decode(dataset[()].decode())


def live(master, key):
    return master.dataset_db.data.raw_view.get(key, (False, [], {}))[1]


async def test_example_scan_live_datasets_and_results_file(lab):
    example_lab(lab)

    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit(
                "main", expid("repository/scan.py", log_level=20, start=-2.0, stop=2.0,
                              points=5))
            await wait_until(lambda: rid in ends, timeout=30)
            end = ends[rid]
            assert end.status == "completed", end.error
            positions = [-2.0, -1.0, 0.0, 1.0, 2.0]
            expected = [1000.0 * numpy.exp(-x * x / 2) for x in positions]
            # live datasets, as the master holds them
            numpy.testing.assert_allclose(live(m, "bluesky.primary.motor"), positions)
            numpy.testing.assert_allclose(live(m, "bluesky.primary.motor_setpoint"),
                                          positions)
            numpy.testing.assert_allclose(live(m, "bluesky.primary.det"), expected)
            assert m.dataset_db.get("scan.peak_position") == 0.0
            # the results file
            with h5py.File(end.results, "r") as f:
                run = f["bluesky/run_0"]
                numpy.testing.assert_allclose(run["primary/data/motor"][()], positions)
                numpy.testing.assert_allclose(run["primary/data/det"][()], expected)
                assert list(run["primary/seq_num"][()]) == [1, 2, 3, 4, 5]
                assert len(run["primary/time"][()]) == 5
                start, stop = pyon_text(run["start"]), pyon_text(run["stop"])
                descriptors = pyon_text(run["primary/descriptors"])
                log = [line.decode() for line in f["log"][()]]
                assert "bluesky.primary.det" not in f["datasets"]
            assert start["rid"] == rid and start["pipeline"] == "main"
            assert start["expid"]["file"] == "repository/scan.py"
            assert "repo_rev" in start and start["purpose"] == "example scan"
            assert start["plan_name"] == "scan"
            assert stop["exit_status"] == "success" and stop["num_events"]["primary"] == 5
            assert set(descriptors[0]["data_keys"]) == {"motor", "motor_setpoint", "det"}
            table = [line for line in log if "labpipe.bluesky.table" in line]
            assert any("seq_num" in line and "det" in line for line in table)
            assert sum("primary |" in line for line in table) == 1 + 5

    await main()


LONG_COUNT = """
import asyncio
import os
from bluesky import plan_stubs as bps
from bluesky.plans import count

class LongCount(EnvExperiment):
    def build(self):
        self.setattr_device("det")
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("num", NumberValue(6, precision=0, type="int", step=1))

    def run(self):
        gate = self.gate

        def per_shot(detectors):
            yield from bps.one_shot(detectors)
            # hold after the first shot until the test opens the gate
            while gate and not os.path.exists(gate):
                yield from bps.sleep(0.005)

        self.run_plan(count([self.det], num=self.num or None, delay=0.005,
                            per_shot=per_shot))
"""

async def test_long_count_pauses_for_higher_priority_and_resumes(lab):
    example_lab(lab)
    long_count = lab.experiment("long_count", LONG_COUNT)
    stamp = lab.experiment("stamp", STAMP)
    gate = lab.path("gate")

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            low = await m.scheduler.submit("main", expid(long_count, gate=gate, num=6))
            await wait_until(lambda: len(live(m, "bluesky.primary.det")) >= 1, timeout=20)
            high = await m.scheduler.submit("main", expid(stamp), priority=10)
            await wait_until(lambda: (high, "prepare_done") in rec.events)
            # the plan asks check_pause at most once per CHECK_INTERVAL: let that pass
            # since its first point's checkpoint, so that it asks at the next one
            await asyncio.sleep(2 * CHECK_INTERVAL)
            open(gate, "w").close()
            await wait_until(lambda: low in ends and high in ends, timeout=30)
            assert ends[low].status == "completed", ends[low].error
            assert rec.statuses(low) == ["pending", "preparing", "prepare_done", "running",
                                         "paused", "running", "run_done", "analyzing",
                                         "removed"]
            assert rec.index(low, "paused") < rec.index(high, "running") \
                < rec.index(high, "run_done") < rec.index(low, "run_done")
            high_ran_at = m.dataset_db.get("high_ran_at")
            with h5py.File(ends[low].results, "r") as f:
                run = f["bluesky/run_0"]
                seq_num = list(run["primary/seq_num"][()])
                times = run["primary/time"][()]
                interruptions = pyon_text(run["interruptions/data/interruption"])
                stop = pyon_text(run["stop"])
            # one run, every point once: resumed from the checkpoint, nothing lost or
            # repeated; the higher-priority run went between the first and second points
            assert seq_num == [1, 2, 3, 4, 5, 6]
            assert times[0] < high_ran_at < times[1]
            assert interruptions == ["pause", "resume"]
            assert stop["exit_status"] == "success"
            assert len(live(m, "bluesky.primary.det")) == 6

    await main()


async def endless_count(m, long_count):
    """Submit LONG_COUNT without end; its RID once three points have arrived."""
    rid = await m.scheduler.submit("main", expid(long_count, num=0))
    await wait_until(lambda: len(live(m, "bluesky.primary.det")) >= 3, timeout=20)
    return rid


async def test_termination_mid_plan(lab):
    example_lab(lab)
    long_count = lab.experiment("long_count", LONG_COUNT)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            ends = run_ends(m.scheduler)
            rid = await endless_count(m, long_count)
            await m.scheduler.request_termination(rid)
            await wait_until(lambda: rid in ends, timeout=20)
            assert ends[rid].status == "terminated"
            assert "deleting" not in rec.statuses(rid)
            with h5py.File(ends[rid].results, "r") as f:
                run = f["bluesky/run_0"]
                seq_num = list(run["primary/seq_num"][()])
                det = run["primary/data/det"][()]
                stop = pyon_text(run["stop"])
            assert len(seq_num) >= 3 and seq_num == list(range(1, len(seq_num) + 1))
            numpy.testing.assert_allclose(det, 1000.0)
            # (bluesky drops the reason given to abort() when the RunEngine is paused)
            assert stop["exit_status"] == "abort"

    await main()


async def test_plans_submitted_by_name_with_device_names(lab):
    example_lab(lab)
    with open(os.path.join(ROOT, "repository/plans.py"), encoding="utf-8") as f:
        lab.write("repository/plans.py", f.read())

    async def main():
        async with running_master(lab) as m:
            explist = m.experiment_db.explist.raw_view
            await wait_until(lambda: {"count", "scan", "peak_scan"}
                             <= {e["class_name"] for e in explist.values()}, timeout=20)
            # a device parameter offers the device database's keys
            peak = next(e for e in explist.values() if e["class_name"] == "peak_scan")
            motor = peak["arginfo"]["motor"][0]
            assert motor["ty"] == "EnumerationValue"
            assert set(motor["choices"]) == set(m.device_db.get_device_db())
            ends = run_ends(m.scheduler)
            items = [("count", [["det"]], {"num": 3}),
                     ("scan", [["det"], "motor", -1, 1], {"num": 3}),
                     ("peak_scan", [], {"detectors": ["det"], "motor": "motor",
                                        "start": 0.0, "stop": 2.0, "num": 3})]
            rids = {}
            # queueserver-style items through the wire: schedule.submit_plan
            schedule = AsyncClient()
            await schedule.connect_rpc("127.0.0.1", m.port("control"), "schedule")
            try:
                for name, args, kwargs in items:
                    rids[name] = await schedule.submit_plan("main", name, args, kwargs)
                with pytest.raises(ValueError, match="no_such_plan"):
                    await schedule.submit_plan("main", "no_such_plan")
            finally:
                schedule.close_rpc()
            await wait_until(lambda: all(r in ends for r in rids.values()), timeout=30)
            data = {}
            for name, rid in rids.items():
                assert ends[rid].status == "completed", (name, ends[rid].error)
                with h5py.File(ends[rid].results, "r") as f:
                    run = f["bluesky/run_0"]
                    data[name] = {k: run[f"primary/data/{k}"][()]
                                  for k in run["primary/data"]}
                    data[name]["start"] = pyon_text(run["start"])
            assert data["count"]["start"]["plan_name"] == "count"
            assert data["count"]["start"]["num_points"] == 3
            numpy.testing.assert_allclose(data["count"]["det"], [1000.0] * 3)
            numpy.testing.assert_allclose(data["scan"]["motor"], [-1.0, 0.0, 1.0])
            numpy.testing.assert_allclose(data["peak_scan"]["motor"], [0.0, 1.0, 2.0])
            numpy.testing.assert_allclose(
                data["peak_scan"]["det"], [1000.0 * numpy.exp(-x * x / 2) for x in (0, 1, 2)])

    await main()


async def test_delete_kills_a_running_plan(lab):
    example_lab(lab)
    long_count = lab.experiment("long_count", LONG_COUNT)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            rid = await endless_count(m, long_count)
            await m.scheduler.delete(rid)
            await wait_until(lambda: (rid, "removed") in rec.events, timeout=20)
            assert rec.statuses(rid)[-2:] == ["deleting", "removed"]
            # the plan stopped: no more points arrive
            n = len(live(m, "bluesky.primary.det"))
            await asyncio.sleep(0.1)
            assert len(live(m, "bluesky.primary.det")) == n

    await main()
