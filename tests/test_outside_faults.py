"""Faults from outside the master: a worker killed by SIGKILL (as the OOM killer does) in
each stage, the template killed while spares wait, a full disk."""

import os
import signal
import subprocess

import pytest

from conftest import expid, run_ends, running_master, wait_until

STAGES = """
import os, time

class Stages(EnvExperiment):
    def build(self):
        self.setattr_argument("die_in", StringValue(""))

    def _maybe_hang(self, stage):
        if self.die_in == stage:
            self.set_dataset("fault.pid", os.getpid(), broadcast=True)
            while True:
                time.sleep(0.01)

    def prepare(self):
        self._maybe_hang("prepare")

    def run(self):
        self._maybe_hang("run")
        self.set_dataset("fault.ran", self.die_in, broadcast=True)

    def analyze(self):
        self._maybe_hang("analyze")
"""


@pytest.mark.parametrize("stage", ["prepare", "run", "analyze"])
async def test_a_worker_killed_in_any_stage_ends_its_run_and_the_pipeline_goes_on(lab, stage):
    lab.experiment("stages", STAGES)

    async def scenario():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            victim = await m.scheduler.submit("main", expid("repository/stages.py", die_in=stage))
            after = await m.scheduler.submit("main", expid("repository/stages.py", die_in=""))
            datasets = m.dataset_db.data.raw_view
            await wait_until(lambda: "fault.pid" in datasets, timeout=30)
            os.kill(datasets["fault.pid"][1], signal.SIGKILL)
            await wait_until(lambda: victim in ends and after in ends, timeout=30)
            end = ends[victim]
            assert end.status == "failed"
            assert f"died during {stage}" in end.error and "SIGKILL" in end.error
            assert "\n" not in end.error
            assert ends[after].status == "completed"
            assert datasets["fault.ran"][1] == ""
            await wait_until(lambda: victim in m.history.notifier.raw_view)
            assert m.history.notifier.raw_view[victim]["error"] == end.error
    await scenario()


async def test_the_template_killed_while_spares_wait_the_next_run_runs(lab):
    lab.experiment("stages", STAGES)

    async def scenario():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            first = await m.scheduler.submit("main", expid("repository/stages.py", die_in=""))
            await wait_until(lambda: first in ends, timeout=30)
            await wait_until(lambda: m.launcher.ready_spares())  # a spare waits
            template = m.launcher.template()
            spare = m.launcher.ready_spares()[0]
            os.kill(template.pid, signal.SIGKILL)
            await wait_until(lambda: not spare.is_alive(), timeout=10)  # died with it
            second = await m.scheduler.submit("main", expid("repository/stages.py", die_in=""))
            await wait_until(lambda: second in ends, timeout=30)
            assert ends[second].status == "completed", ends[second].error
    await scenario()


WRITER = """
import os, time
import numpy as np

class Writer(EnvExperiment):
    def build(self):
        self.setattr_argument("tag", StringValue(""))
        self.setattr_argument("gate", StringValue(""))

    def run(self):
        self.set_dataset("disk.started." + self.tag, True, broadcast=True)
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
        self.set_dataset("disk.run." + self.tag, self.tag, persist=True)
        self.set_dataset("disk.trace", np.arange(50_000.0))  # archived: a large file
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs as the lab directory (skipped where mounting is not permitted)."""
    root = tmp_path / "lab"
    root.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                 str(root)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs to fill ({e}): needs root or CAP_SYS_ADMIN")
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs to fill (mount: "
                    f"{result.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30)


def _fill(folder):
    """Fill the file system of folder; returns the filler's path."""
    path = os.path.join(folder, "filler")
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return path


async def test_a_full_disk_gives_clear_errors_loses_nothing_acknowledged(small_disk, tmp_path):
    from conftest import Lab
    lab = Lab(small_disk)
    lab.experiment("writer", WRITER)
    gate = str(tmp_path / "gate")  # not on the small disk
    writer = lambda tag, gate="": {"file": "repository/writer.py", "class_name": None,
                                   "arguments": {"tag": tag, "gate": gate},
                                   "log_level": 30}
    acked_sets, acked_rids, errors = {}, [], []

    async def while_full():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            first = await m.scheduler.submit("main", writer("before"))
            await wait_until(lambda: first in ends, timeout=30)
            assert ends[first].status == "completed", ends[first].error
            # a run under way when the disk fills up: its datasets and results
            gated = await m.scheduler.submit("main", writer("gated", gate))
            acked_rids.append(gated)
            await wait_until(lambda: "disk.started.gated" in m.dataset_db.data.raw_view,
                             timeout=30)
            filler = _fill(lab.root)
            open(gate, "w").close()
            await wait_until(lambda: gated in ends, timeout=30)
            assert ends[gated].status != "completed"
            for i in range(20):
                try:
                    await m.dataset_db.set(f"disk.set.{i}", i, persist=True)
                    acked_sets[f"disk.set.{i}"] = i
                except Exception as e:
                    errors.append(e)
                try:
                    acked_rids.append(await m.scheduler.submit("main", writer(str(i))))
                except Exception as e:
                    errors.append(e)
            await wait_until(lambda: all(rid in ends for rid in acked_rids), timeout=60)
            for rid in acked_rids:
                end = ends[rid]
                if end.status != "completed":
                    assert end.error and "\n" not in end.error, end.error
                    errors.append(end.error)
            # reads are served all along
            assert m.scheduler.get_status() is not None
            assert m.dataset_db.get("disk.run.before") == "before"
            assert (await m.history.list(limit=5))
            os.remove(filler)
        assert errors  # the disk was full: something said so
        for e in errors:
            text = str(e)
            assert text and "\n" not in text.strip(), text
            assert "space" in text.lower() or "full" in text.lower(), text

    async def after_restart():
        async with running_master(lab) as m:
            for key, value in acked_sets.items():
                assert m.dataset_db.get(key) == value
            # each acknowledged run has a history record (interrupted, if its end
            # could not be written while the disk was full)
            await wait_until(lambda: set(acked_rids) <= set(m.history.notifier.raw_view),
                             timeout=30)
    await while_full()
    await after_restart()
