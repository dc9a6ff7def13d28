"""Faults from outside the master: a worker killed by SIGKILL (as the OOM killer does) in
each stage, the template killed while spares wait, a full disk."""

import os
import signal
import subprocess

import pytest

from conftest import run_async, run_ends, running_master, wait_until
from labpipe.worker import launcher

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


def expid(die_in=""):
    return {"file": "repository/stages.py", "class_name": None,
            "arguments": {"die_in": die_in}, "log_level": 30}


@pytest.mark.parametrize("stage", ["prepare", "run", "analyze"])
def test_a_worker_killed_in_any_stage_ends_its_run_and_the_pipeline_goes_on(lab, stage):
    lab.experiment("stages", STAGES)

    async def scenario():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            victim = await m.scheduler.submit("main", expid(stage))
            after = await m.scheduler.submit("main", expid())
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
    run_async(scenario())


def test_the_template_killed_while_spares_wait_the_next_run_runs(lab):
    lab.experiment("stages", STAGES)

    async def scenario():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            first = await m.scheduler.submit("main", expid())
            await wait_until(lambda: first in ends, timeout=30)
            await wait_until(lambda: launcher._spares._ready)  # a spare waits
            template = launcher.template()
            spare = launcher._spares._ready[0][0]
            os.kill(template.pid, signal.SIGKILL)
            await wait_until(lambda: not spare.is_alive(), timeout=10)  # died with it
            second = await m.scheduler.submit("main", expid())
            await wait_until(lambda: second in ends, timeout=30)
            assert ends[second].status == "completed", ends[second].error
    run_async(scenario())
