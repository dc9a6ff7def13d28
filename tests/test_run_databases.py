"""Runs with the databases: results files on every exit path, read back with h5py;
interactive arguments; ophyd devices from device_db.py; persistent datasets."""

import os
import signal

import h5py
import pytest

from conftest import ScheduleRecorder, expid, run_ends, running_master, wait_until
from labpipe.protocol import pyon

RECORDS = """
import os, time
import numpy as np

class Records(EnvExperiment):
    def build(self):
        self.setattr_argument("fail", StringValue(""))

    def run(self):
        self.set_dataset("rec.trace", np.arange(5.0), unit="V", broadcast=True)
        self.set_dataset("rec.saved", 42, persist=True)
        self.offset = self.get_dataset("calib.offset")
        print("collected")
        if self.fail == "run":
            raise RuntimeError("laser unlocked")
        if self.fail == "kill":
            self.set_dataset("rec.pid", os.getpid(), broadcast=True)
            while True:
                time.sleep(0.01)

    def analyze(self):
        self.set_dataset("rec.result", self.offset + 1.0)
"""


async def test_results_on_every_exit_path(lab):
    records = lab.experiment("records", RECORDS)

    async def main():
        async with running_master(lab) as m:
            await m.dataset_db.set("calib.offset", 0.5, persist=True)
            ends = run_ends(m.scheduler)
            ok = await m.scheduler.submit("main", expid(records, log_level=20))
            failed = await m.scheduler.submit("main", expid(records, log_level=20, fail="run"))
            killed = await m.scheduler.submit("main", expid(records, log_level=20, fail="kill"))
            await wait_until(lambda: "rec.pid" in m.dataset_db.data.raw_view, timeout=20)
            os.kill(m.dataset_db.get("rec.pid"), signal.SIGKILL)
            await wait_until(lambda: killed in ends, timeout=20)
            return ends, ok, failed, killed

    ends, ok, failed, killed = await main()
    assert [ends[r].status for r in (ok, failed, killed)] == ["completed", "failed", "failed"]

    with h5py.File(ends[ok].results) as f:
        assert f["rid"][()] == ok
        assert list(f["datasets/rec.trace"][()]) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert f["datasets/rec.trace"].attrs["unit"] == "V"
        assert f["datasets/rec.result"][()] == 1.5
        assert f["archive/calib.offset"][()] == 0.5
        assert pyon.decode(f["expid"][()].decode())["file"] == "repository/records.py"
        assert f["run_time"][()] >= f["start_time"][()]
        assert any(b"collected" in line for line in f["log"][()])
        assert "error" not in f
    assert os.path.basename(ends[ok].results) == f"{ok:09d}-Records.h5"

    with h5py.File(ends[failed].results) as f:  # what was collected is kept
        assert list(f["datasets/rec.trace"][()]) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert "laser unlocked" in f["error"][()].decode()

    with h5py.File(ends[killed].results) as f:  # written by the master itself
        assert f["rid"][()] == killed
        assert pyon.decode(f["expid"][()].decode())["arguments"] == {"fail": "kill"}
        assert "died" in f["error"][()].decode()


async def test_persistent_dataset_from_an_experiment_survives_a_restart(lab):
    records = lab.experiment("records", RECORDS)

    async def first():
        async with running_master(lab) as m:
            await m.dataset_db.set("calib.offset", 0.5, persist=True)
            rec = ScheduleRecorder(m.scheduler.notifier)
            rid = await m.scheduler.submit("main", expid(records, log_level=20))
            await wait_until(lambda: (rid, "removed") in rec.events, timeout=20)

    async def second():
        async with running_master(lab) as m:
            return dict(m.dataset_db.data.raw_view)

    await first()
    data = await second()
    assert data["rec.saved"][:2] == (True, 42)
    assert "rec.trace" not in data  # broadcast only: not persistent


INTERACTIVE = """
class Ask(EnvExperiment):
    def run(self):
        try:
            with self.interactive("Calibration") as ia:
                ia.setattr_argument("gain", NumberValue(1.0, min=0.0, max=10.0))
                ia.setattr_argument("note", StringValue("none"))
        except CancelledArgsError:
            self.set_dataset("ask.result", "cancelled", broadcast=True)
        else:
            self.set_dataset("ask.result", (ia.gain, ia.note), broadcast=True)
"""


async def test_interactive_arguments_supplied_cancelled_and_deleted(lab):
    ask = lab.experiment("ask", INTERACTIVE)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            requests = m.interactive_db.notifier
            datasets = m.dataset_db.data.raw_view

            rid = await m.scheduler.submit("main", expid(ask, log_level=20))
            await wait_until(lambda: rid in requests.raw_view)
            request = requests.raw_view[rid]
            assert request["title"] == "Calibration"
            assert [a[0] for a in request["arglist_desc"]] == ["gain", "note"]
            assert request["arglist_desc"][0][1]["ty"] == "NumberValue"
            m.interactive_db.supply(rid, {"gain": 2.5})
            await wait_until(lambda: "ask.result" in datasets)
            assert datasets["ask.result"][1] == (2.5, "none")

            # a value its argument refuses is refused when supplied, naming the
            # argument; the run still waits for values
            rid = await m.scheduler.submit("main", expid(ask, log_level=20))
            await wait_until(lambda: rid in requests.raw_view)
            with pytest.raises(ValueError, match=f"RID {rid}: gain: 99.0 is above the "
                                                 "maximum 10.0"):
                m.interactive_db.supply(rid, {"gain": 99.0})
            assert rid in requests.raw_view
            m.interactive_db.supply(rid, {"gain": 3.0})
            await wait_until(lambda: datasets["ask.result"][1] == (3.0, "none"))
            await wait_until(lambda: rid not in requests.raw_view)

            rid = await m.scheduler.submit("main", expid(ask, log_level=20))
            await wait_until(lambda: rid in requests.raw_view)
            m.interactive_db.cancel(rid)
            await wait_until(lambda: datasets["ask.result"][1] == "cancelled")

            rid = await m.scheduler.submit("main", expid(ask, log_level=20))
            await wait_until(lambda: rid in requests.raw_view)
            await m.scheduler.delete(rid)
            await wait_until(lambda: (rid, "removed") in rec.events)
            assert rid not in requests.raw_view

    await main()


OPHYD = """
class MoveAndRead(EnvExperiment):
    def build(self):
        self.setattr_device("motor")
        self.setattr_device("det")

    def run(self):
        self.motor.set(0.0).wait(timeout=5)
        self.set_dataset("ophyd.motor", self.motor.position, broadcast=True)
        reading = self.det.read()
        self.set_dataset("ophyd.det_keys", sorted(reading), broadcast=True)
"""


async def test_ophyd_devices_from_the_example_device_db(lab):
    with open(os.path.join(os.path.dirname(__file__), "..", "device_db.py")) as f:
        lab.write("device_db.py", f.read())
    exp = lab.experiment("ophyd_exp", OPHYD)

    async def main():
        async with running_master(lab) as m:
            rec = ScheduleRecorder(m.scheduler.notifier)
            rid = await m.scheduler.submit("main", expid(exp, log_level=20))
            await wait_until(lambda: (rid, "removed") in rec.events, timeout=30)
            return dict(m.dataset_db.data.raw_view)

    data = await main()
    assert data["ophyd.motor"][1] == 0.0
    assert data["ophyd.det_keys"][1] and all(k.startswith("det") for k in data["ophyd.det_keys"][1])
