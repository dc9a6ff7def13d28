"""ARTIQ experiment files run unchanged: ``from artiq.experiment import *`` answered by
labpipe's language in workers, examiners and labpipe-run (issue 14), never shadowing a
real ``artiq``; core-device API fails with one line naming it."""

import os
import subprocess
import sys
import textwrap

import h5py
import pytest

from conftest import expid, run_ends, running_master, wait_until
from labpipe.protocol.rpc import AsyncClient

ARTIQ_EXP = '''
"""An ARTIQ experiment, as ARTIQ's own examples are written."""

from artiq.experiment import *
from artiq.language.units import ms


class Sweep(EnvExperiment):
    """Frequency sweep"""

    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("repeats", NumberValue(3, precision=0, step=1, type="int"))
        self.setattr_argument("wait", NumberValue(1*ms, unit="ms"))
        self.setattr_argument("freqs", Scannable(default=RangeScan(1*MHz, 3*MHz, 3),
                                                 unit="MHz"))
        self.setattr_argument("label", StringValue("sweep"))

    def run(self):
        points = [f for f in self.freqs]
        self.set_dataset("sweep.points", points, broadcast=True)
        self.set_dataset("sweep.repeats", self.repeats)
        self.scheduler.pause()
        print("swept", len(points))
'''

KERNEL_EXP = '''
from artiq.experiment import *


class Pulse(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("fire", BooleanValue(True))

    @kernel
    def pulse(self, n: TInt32) -> TNone:
        delay(1*us)

    def run(self):
        if self.fire:
            self.pulse(1)
'''


async def test_artiq_file_scanned_submitted_and_run_through_a_master(lab):
    lab.write("repository/sweep.py", ARTIQ_EXP)

    async def main():
        async with running_master(lab) as m:
            explist = m.experiment_db.explist.raw_view
            assert "Frequency sweep" in explist, m.experiment_db.explist_errors.raw_view
            arginfo = explist["Frequency sweep"]["arginfo"]
            assert arginfo["repeats"][0]["type"] == "int"
            assert arginfo["wait"][0]["type"] == "auto"  # as ARTIQ's procdesc says
            assert arginfo["wait"][0]["scale"] == 1e-3
            assert arginfo["freqs"][0]["ty"] == "Scannable"
            ends = run_ends(m.scheduler)
            schedule = AsyncClient()
            await schedule.connect_rpc("127.0.0.1", m.port("control"), "schedule")
            try:
                rid = await schedule.submit(
                    "main", dict(expid("sweep.py", repeats=4), repo_rev=None))
            finally:
                schedule.close_rpc()
            await wait_until(lambda: rid in ends, timeout=30)
            assert ends[rid].status == "completed", ends[rid].error
            with h5py.File(ends[rid].results, "r") as f:
                assert list(f["datasets/sweep.points"][()]) == [1e6, 2e6, 3e6]
                assert f["datasets/sweep.repeats"][()] == 4
            assert m.dataset_db.get("sweep.points") == [1e6, 2e6, 3e6]

    await main()


async def test_kernel_file_is_examined_and_its_run_fails_with_one_line(lab):
    lab.write("repository/pulse.py", KERNEL_EXP)

    async def main():
        async with running_master(lab) as m:
            assert "Pulse" in m.experiment_db.explist.raw_view  # defining a kernel is fine
            ends = run_ends(m.scheduler)
            quiet = await m.scheduler.submit(
                "main", dict(expid("pulse.py", fire=False), repo_rev=None))
            await wait_until(lambda: quiet in ends, timeout=30)
            assert ends[quiet].status == "completed", ends[quiet].error  # never called
            rid = await m.scheduler.submit("main", dict(expid("pulse.py"), repo_rev=None))
            await wait_until(lambda: rid in ends, timeout=30)
            assert ends[rid].status == "failed"
            error = ends[rid].error
            assert "\n" not in error.strip()
            assert "kernel: ARTIQ kernels are not supported by labpipe " \
                   "(used by Pulse.pulse)" in error

    await main()


def labpipe_run(cwd, *args, env=None):
    return subprocess.run([sys.executable, "-m", "labpipe.client.run", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def test_labpipe_run_runs_an_artiq_file(lab):
    lab.write("repository/sweep.py", ARTIQ_EXP)
    result = labpipe_run(lab.root, "repository/sweep.py", "repeats=2", "-o", "out.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(lab.path("out.h5")) as f:
        assert f["datasets/sweep.repeats"][()] == 2


def test_labpipe_run_kernel_error_is_one_line(lab):
    lab.write("repository/pulse.py", KERNEL_EXP)
    result = labpipe_run(lab.root, "repository/pulse.py")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "labpipe-run: UnsupportedARTIQFeature: kernel: ARTIQ kernels are not supported "
        "by labpipe (used by Pulse.pulse)")


def test_timeline_and_missing_artiq_modules_are_one_line(lab):
    lab.write("repository/timeline.py", '''
        from artiq.experiment import *

        class Wait(EnvExperiment):
            def run(self):
                delay(10*ms)
    ''')
    lab.write("repository/driver.py", '''
        from artiq.experiment import *
        from artiq.coredevice.ttl import TTLOut

        class Blink(EnvExperiment):
            def run(self):
                pass
    ''')
    result = labpipe_run(lab.root, "repository/timeline.py")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "labpipe-run: UnsupportedARTIQFeature: delay: the ARTIQ RTIO timeline is not "
        "supported by labpipe (it has no core device)"]
    result = labpipe_run(lab.root, "repository/driver.py")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "'artiq.coredevice'" in line and "install ARTIQ" in line


def test_a_real_artiq_is_not_shadowed(lab, tmp_path):
    fake = tmp_path / "site" / "artiq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "experiment.py").write_text(textwrap.dedent('''
        from labpipe.experiment import *
        MARK = "the real artiq.experiment"
    '''))
    lab.write("repository/which.py", '''
        import artiq
        from artiq.experiment import *
        import artiq.experiment

        class Which(EnvExperiment):
            def run(self):
                print(getattr(artiq, "REAL", False), artiq.experiment.MARK, flush=True)
                __import__("artiq.language")
    ''')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    result = labpipe_run(lab.root, "repository/which.py", env=env)
    assert result.returncode == 1  # the real one has no artiq.language: no alias given
    assert "No module named 'artiq.language'" in result.stderr
    assert "labpipe answers" not in result.stderr
    assert "True the real artiq.experiment" in result.stdout


def test_alias_modules_hold_artiqs_names_and_labpipes_objects():
    from labpipe.language import artiq_alias
    import labpipe.language as language
    was_installed = artiq_alias.installed()
    artiq_alias.install()
    try:
        import artiq.experiment
        import artiq.language.environment
        import artiq.language.scan
        import artiq.language.units
        import artiq.language.core
        assert artiq.experiment.EnvExperiment is language.EnvExperiment
        assert artiq.language.core.TerminationRequested is language.TerminationRequested
        assert artiq.language.environment.__name__ == "artiq.language.environment"
        for name in ("EnvExperiment", "HasEnvironment", "Experiment", "NumberValue",
                     "StringValue", "BooleanValue", "EnumerationValue", "PYONValue",
                     "Scannable", "RangeScan", "CenterScan", "ExplicitScan", "NoScan",
                     "ms", "us", "MHz", "TerminationRequested", "kernel", "portable",
                     "rpc", "TInt32", "RTIOUnderflow", "NoDefault", "DefaultMissing",
                     "CancelledArgsError", "MultiScanManager"):
            assert name in artiq.experiment.__all__, name
            assert hasattr(artiq.experiment, name), name
        assert artiq.language.units.MHz == 1e6 and artiq.language.units.mW == 1e-3

        @artiq.experiment.portable
        def twice(x):
            return 2 * x
        assert twice(2) == 4  # portable and rpc functions run on the host, as in ARTIQ
        with pytest.raises(NotImplementedError, match="^TInt32: ARTIQ kernel types"):
            artiq.experiment.TInt32.width
    finally:
        if not was_installed:
            artiq_alias.uninstall()
            assert "artiq" not in sys.modules


def test_core_device_request_is_one_line(lab):
    lab.write("repository/core.py", '''
        from artiq.experiment import *

        class UsesCore(EnvExperiment):
            def build(self):
                self.setattr_device("core")

            def run(self):
                self.core.reset()
    ''')
    result = labpipe_run(lab.root, "repository/core.py")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "core: the ARTIQ core device is not supported by labpipe" in line


def test_repository_examples_are_valid_under_artiqs_numbervalue_rules():
    from labpipe.worker.examine import examine_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    described = examine_file(os.path.join(root, "repository", "hello.py"))
    points = described["Hello"]["arginfo"]["points"][0]
    assert points["type"] == "int" and points["precision"] == 0 and points["step"] == 1
    assert described["Hello"]["arginfo"]["delay"][0]["type"] == "auto"
