"""Analysis on a Dask cluster (issue 22, docs/dask.md): a real master in the test's
event loop, real workers, a real ``distributed.LocalCluster`` (one worker of threads,
in a process of its own: ``python -m labpipe.master.dask_cluster --threads``, or the
master's own with ``dask_scheduler = "local"``), the results files read back with
h5py."""

import glob
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy
import pytest

from conftest import process_alive, run_ends, running_master, wait_until
from labpipe.config import ConfigError, config_from_dict
from labpipe.master.dask_cluster import check_setting

EXPERIMENTS = """
import logging, os, time
import numpy


def square(x):
    return numpy.asarray(x) ** 2


def add(a, b):
    print("-" * 70000)  # more than a pipe holds: the cluster's stdout is not one
    return a + b


def bad_fit(x):
    raise ValueError("bad fit of " + str(x))


def crash():
    os._exit(3)  # takes its Dask worker process down


class Offloading(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("square", self.scheduler.offload(square, [0, 1, 2, 3]),
                         broadcast=True)
        self.total = self.scheduler.offload(add, 2, 3)

    def analyze(self):
        self.set_dataset("total", self.total.result())


class OffloadingTwice(Offloading):
    # its analyze, on the cluster, waits for what its run offloaded

    @offload_analyze
    def analyze(self):
        self.set_dataset("total", self.total.result())


class Failing(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("kept", 1.5)
        self.set_dataset("fit", self.scheduler.offload(bad_fit, 7))


class Crashing(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("fit", self.scheduler.offload(crash))


class Analysis(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("started", StringValue(""))
        self.setattr_argument("fail", BooleanValue(False))

    def run(self):
        self.points = numpy.linspace(0.0, 1.0, 5)
        self.set_dataset("points", self.points, broadcast=True)
        self.set_dataset("trace", [1.0, 2.0])

    def analyze(self):
        if self.started:
            open(self.started, "w").close()
        deadline = time.monotonic() + 30
        while self.gate and not os.path.exists(self.gate):
            assert time.monotonic() < deadline, "the test never opened the gate"
            time.sleep(0.01)
        logging.getLogger("analysis").warning("fitting %d points", len(self.points))
        self.set_dataset("fit", float(self.points.sum()), broadcast=True)
        self.append_to_dataset("trace", 3.0)
        self.mutate_dataset("points", 0, -1.0)
        if self.fail:
            raise ValueError("no convergence")


class OffloadedAnalysis(Analysis):
    @offload_analyze
    def analyze(self):
        super().analyze()
"""


def expid(class_name, **arguments):
    return {"file": "repository/offload.py", "class_name": class_name,
            "arguments": arguments, "log_level": 30}


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of threads in a process of its own; its scheduler's address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master.dask_cluster", "--threads",
         "--parent-pid", str(os.getpid())], stdout=subprocess.PIPE, text=True)
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        yield address
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture
def dask_lab(lab):
    lab.experiment("offload", EXPERIMENTS)
    return lab


def datasets_of(path):
    """{key: value} of a results file's ``datasets/``, and its error (or None)."""
    with h5py.File(path, "r") as f:
        values = {key: f["datasets"][key][()] for key in f["datasets"]}
        error = f["error"][()].decode() if "error" in f else None
        log = [line.decode() for line in f["log"][()]]
    return values, error, log


def results_of(lab, rid):
    return glob.glob(os.path.join(lab.root, "results", "*", "*", f"{rid:09d}-*.h5"))


async def test_an_offloaded_functions_result_in_a_dataset(dask_lab, cluster):
    async with running_master(dask_lab, dask_scheduler=cluster) as m:
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit("main", expid("Offloading"))
        await wait_until(lambda: rid in ends, timeout=30)
        end = ends[rid]
        assert end.status == "completed", end.error
        values, error, _ = datasets_of(end.results)
        assert error is None
        assert list(values["square"]) == [0, 1, 4, 9]
        assert values["total"] == 5
        # a broadcast dataset set to an offloaded result reaches the master collected
        assert list(m.dataset_db.data.raw_view["square"][1]) == [0, 1, 4, 9]
        record = await m.history.wait(rid, 30)
        assert record["analyzed_on"] is None  # analyze itself ran in the worker
        # an offloaded analyze may use what its run offloaded
        rid = await m.scheduler.submit("main", expid("OffloadingTwice"))
        await wait_until(lambda: rid in ends, timeout=30)
        assert ends[rid].status == "completed", ends[rid].error
        values, _, _ = datasets_of(ends[rid].results)
        assert values["total"] == 5 and list(values["square"]) == [0, 1, 4, 9]
        assert (await m.history.wait(rid, 30))["analyzed_on"]["dask_scheduler"] == cluster


async def test_offloaded_analyze_frees_the_stage_and_writes_the_same_file(dask_lab,
                                                                         cluster):
    gate, started = dask_lab.path("gate"), dask_lab.path("started")
    async with running_master(dask_lab, dask_scheduler=cluster) as m:
        ends = run_ends(m.scheduler)
        offloaded = await m.scheduler.submit(
            "main", expid("OffloadedAnalysis", gate=gate, started=started))
        await wait_until(lambda: os.path.exists(started), timeout=30)
        # the analysis waits on the cluster: the next run goes through all its stages
        local = await m.scheduler.submit("main", expid("Analysis"))
        await wait_until(lambda: local in ends, timeout=30)
        assert ends[local].status == "completed", ends[local].error
        assert offloaded not in ends
        assert m.scheduler.notifier.raw_view[offloaded]["status"] == "analyzing"
        assert results_of(dask_lab, offloaded) == []
        open(gate, "w").close()
        await wait_until(lambda: offloaded in ends, timeout=30)
        end = ends[offloaded]
        assert end.status == "completed", end.error
        assert results_of(dask_lab, offloaded) == [end.results]
        remote, error, remote_log = datasets_of(end.results)
        here, _, local_log = datasets_of(ends[local].results)
        assert error is None
        assert sorted(remote) == sorted(here) == ["fit", "points", "trace"]
        for key in here:
            numpy.testing.assert_array_equal(remote[key], here[key])
        assert remote["fit"] == 2.5 and list(remote["trace"]) == [1.0, 2.0, 3.0]
        assert "WARNING:analysis:fitting 5 points" in remote_log
        assert "WARNING:analysis:fitting 5 points" in local_log
        # what the cluster's analyze broadcast reached the master
        assert m.dataset_db.data.raw_view["fit"][1] == 2.5
        assert m.dataset_db.data.raw_view["points"][1][0] == -1.0
        record = await m.history.wait(offloaded, 30)
        assert record["status"] == "completed"
        assert record["analyzed_on"]["dask_scheduler"] == cluster
        assert record["analyzed_on"]["dask_worker"].startswith("tcp://127.0.0.1:")
        assert (await m.history.wait(local, 30))["analyzed_on"] is None


async def test_a_function_raising_on_the_cluster(dask_lab, cluster):
    async with running_master(dask_lab, dask_scheduler=cluster) as m:
        ends = run_ends(m.scheduler)
        function = await m.scheduler.submit("main", expid("Failing"))
        analysis = await m.scheduler.submit("main", expid("OffloadedAnalysis", fail=True))
        await wait_until(lambda: function in ends and analysis in ends, timeout=30)
        end = ends[function]
        assert end.status == "failed"
        assert "dataset 'fit'" in end.error and "ValueError: bad fit of 7" in end.error
        values, error, _ = datasets_of(end.results)
        assert values["kept"] == 1.5 and "ValueError: bad fit of 7" in error
        end = ends[analysis]
        assert end.status == "failed"
        assert "ValueError: no convergence" in end.error
        values, error, _ = datasets_of(end.results)
        assert values["fit"] == 2.5  # what it set before it raised is kept
        assert "ValueError: no convergence" in error
        assert "in analyze" in error  # the cluster's traceback
        record = await m.history.wait(analysis, 30)
        assert "ValueError: no convergence" in record["error"]
        assert record["analyzed_on"]["dask_scheduler"] == cluster


async def test_an_offloaded_analysis_deleted_or_left_by_a_stopping_master(dask_lab, cluster,
                                                                         caplog):
    started = dask_lab.path("started")
    async with running_master(dask_lab, dask_scheduler=cluster) as m:
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit(
            "main", expid("OffloadedAnalysis", gate=dask_lab.path("never"),
                          started=started))
        await wait_until(lambda: os.path.exists(started), timeout=30)
        await m.scheduler.delete(rid)
        await wait_until(lambda: rid in ends, timeout=30)
        assert ends[rid].status == "deleted"
        os.unlink(started)
        pending = await m.scheduler.submit(
            "main", expid("OffloadedAnalysis", gate=dask_lab.path("never"),
                          started=started))
        await wait_until(lambda: os.path.exists(started), timeout=30)
    # the waiting worker heard the master's Terminate: no SIGTERM was needed
    assert "did not exit when asked" not in caplog.text
    open(dask_lab.path("never"), "w").close()  # the cluster's threads are free again
    async with running_master(dask_lab, dask_scheduler=cluster) as m:
        assert (await m.history.wait(pending, 30))["status"] == "interrupted"


async def test_a_dask_worker_lost(dask_lab):
    """A cluster of worker processes that gives a task up at the first worker it took
    down: the run fails saying its Dask worker was lost."""
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master.dask_cluster", "--workers", "1",
         "--parent-pid", str(os.getpid())], stdout=subprocess.PIPE, text=True, env=env,
        process_group=0)
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        async with running_master(dask_lab, dask_scheduler=address) as m:
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit("main", expid("Crashing"))
            await wait_until(lambda: rid in ends, timeout=60)
            end = ends[rid]
            assert end.status == "failed"
            assert "dataset 'fit'" in end.error
            assert "the Dask worker running it was lost" in end.error, end.error
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


async def test_the_scheduler_killed_mid_analysis(dask_lab):
    started = dask_lab.path("started")
    async with running_master(dask_lab, dask_scheduler="local",
                              dask_local_processes=False) as m:
        cluster_pid = m.dask.pid
        assert process_alive(cluster_pid)
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit(
            "main", expid("OffloadedAnalysis", gate=dask_lab.path("never"),
                          started=started))
        await wait_until(lambda: os.path.exists(started), timeout=30)
        os.killpg(cluster_pid, signal.SIGKILL)
        await wait_until(lambda: rid in ends, timeout=30)
        end = ends[rid]
        assert end.status == "failed"
        assert "Dask scheduler" in end.error and "is gone" in end.error, end.error
        _, error, _ = datasets_of(end.results)
        assert "is gone" in error
        record = await m.history.wait(rid, 30)
        assert record["status"] == "failed" and "is gone" in record["error"]
        # the master goes on: a run analyzed in its worker still completes
        after = await m.scheduler.submit("main", expid("Analysis"))
        await wait_until(lambda: after in ends, timeout=30)
        assert ends[after].status == "completed", ends[after].error


async def test_the_local_cluster_stops_with_the_master(dask_lab):
    async with running_master(dask_lab, dask_scheduler="local",
                              dask_local_processes=False) as m:
        pid = m.dask.pid
        assert m.dask.address().startswith("tcp://127.0.0.1:")
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit("main", expid("Offloading"))
        await wait_until(lambda: rid in ends, timeout=30)
        assert ends[rid].status == "completed", ends[rid].error
    await wait_until(lambda: not process_alive(pid), timeout=10)


async def test_offload_without_a_cluster_fails_the_run_in_one_line(dask_lab):
    async with running_master(dask_lab) as m:
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit("main", expid("Offloading"))
        await wait_until(lambda: rid in ends, timeout=30)
        assert ends[rid].status == "failed"
        assert "this lab has no Dask cluster" in ends[rid].error
        assert "\n" not in ends[rid].error.partition("Traceback")[0].strip()


def test_the_setting_is_checked():
    assert check_setting("local") == "local"
    assert check_setting("tcp://10.0.0.2:8786") == "tcp://10.0.0.2:8786"
    with pytest.raises(ValueError, match="expected \"local\" or a scheduler address"):
        check_setting("10.0.0.2:8786")
    config = config_from_dict({"master": {"dask_scheduler": "tcp://h:8786"}})
    assert config.master.dask_scheduler == "tcp://h:8786"
    with pytest.raises(ConfigError, match=r"\[master\] dask_scheduler"):
        config_from_dict({"master": {"dask_scheduler": 8786}})


def test_dask_scheduler_flag_and_file(tmp_path):
    """labpipe-master refuses a malformed setting with one line, from the file or the
    flag."""
    (tmp_path / "labpipe.toml").write_text(textwrap.dedent("""
        [master]
        dask_scheduler = "nonsense"
    """))
    (tmp_path / "device_db.py").write_text("device_db = {}\n")
    (tmp_path / "repository").mkdir()
    command = [sys.executable, "-m", "labpipe.master", "--port-notify", "0",
               "--port-control", "0", "--port-logging", "0", "--port-broadcast", "0",
               "--bind", "127.0.0.1"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "labpipe-master: dask_scheduler: expected \"local\" or a scheduler address such "
        "as tcp://HOST:8786, not 'nonsense'"]
    done = subprocess.run(command + ["--dask-scheduler", "also-bad"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not 'also-bad'" in done.stderr


def test_offload_without_a_master_runs_here():
    from labpipe.worker.offload import OffloadError
    from labpipe.worker.virtual_devices import LocalScheduler
    scheduler = LocalScheduler()
    assert scheduler.offload(sum, [1, 2, 3]).result() == 6
    failed = scheduler.offload(int, "x")
    with pytest.raises(OffloadError, match="raised ValueError"):
        failed.result()



def test_a_killed_master_leaves_no_cluster_behind(dask_lab):
    """labpipe-master with labpipe.toml's dask_scheduler = "local": its LocalCluster
    (worker processes and all) serves the runs, and is gone soon after a kill -9 of
    the master."""
    from conftest import MasterProcess, descendants, wait_for, wait_gone
    dask_lab.write("labpipe.toml", """
        [master]
        dask_scheduler = "local"
    """)
    master = MasterProcess(dask_lab.root)
    try:
        def cluster_pids():
            found = []
            for pid in descendants(master.process.pid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"labpipe.master.dask_cluster" in f.read():
                            found.append(pid)
                except OSError:
                    pass
            return found
        wait_for(lambda: len(cluster_pids()) == 1, timeout=30)
        cluster = cluster_pids()[0]
        with master.client("schedule") as schedule:
            rid = schedule.submit("main", expid("Offloading"), 0, None, False)
        with master.client("history") as history:
            record = history.wait(rid, 60)
        assert record["status"] == "completed", record["error"]
        ours = [cluster, *descendants(cluster)]
        assert len(ours) > 1  # the LocalCluster's Dask worker processes
        master.process.kill()
        master.process.wait()
        assert wait_gone(ours, 20) == []
    finally:
        master.stop()


def test_datasets_set_to_offloaded_results(cluster):
    """The dataset manager keeps an offloaded result as the value-to-be: nothing is
    sent until it is collected (by reading it, or all at once), a results file written
    before holds a line saying why it is not there."""
    import time
    from labpipe.worker.datasets import DatasetManager
    from labpipe.worker.offload import Offloader, OffloadError
    def no_master(key):
        raise KeyError(key)
    mods = []
    datasets = DatasetManager(mods.append, no_master)
    offloader = Offloader(lambda: cluster)
    try:
        datasets.set("sum", offloader.submit(sum, [1, 2, 3]), broadcast=True)
        datasets.set("slow", offloader.submit(time.sleep, 3), broadcast=True)
        datasets.set("bad", offloader.submit(int, "x"))
        assert mods == []
        assert datasets.get("sum") == 6  # reading it collects it
        assert mods == [{"action": "setitem", "path": [], "key": "sum",
                         "value": (False, 6, {})}]
        local = datasets.local
        assert local["slow"][0].startswith("not collected: offloaded sleep() had not")
        with pytest.raises(OffloadError, match=r"dataset 'bad': offloaded int\(\) raised "
                                               r"ValueError"):
            datasets.collect_offloaded()
        assert datasets.get("slow") is None  # collected too, the failure aside
        assert [mod["key"] for mod in mods] == ["sum", "slow"]
        assert "bad" not in datasets.local
    finally:
        offloader.close()
