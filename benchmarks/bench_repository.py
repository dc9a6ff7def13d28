"""Benchmark repository scans: 200 small experiment files, filesystem and Git backends.

Prints each figure beside its floor (the ratio figure / floor after it), the floors
measured in the same run (``floors.py``, or here for those about files):

- template start (once per master): the worker template process (``forkserver.py``)
  started and ready, having imported numpy, h5py and labpipe's worker code. Floor: a
  Python start (``python -c pass``).

For each backend, in a temporary lab:

- pool start: the examining processes started (in parallel, forked by the template).
  Floor: a warm fork+exit+reap.
- cold scan: the first scan of 200 files (the examining processes already started,
  as they are once the master runs). Floor: reading and compiling the 200 files (in
  this process), divided by the number of examining processes.
- rescan after one file changed: the median and max over 10 rescans, each after
  changing another file (on Git: committing and pushing it with the ``git`` command
  line, which is not timed). Floor, filesystem: a stat of every file (how a change is
  found) + compiling one file; Git: writing one small plain file (the changed file's
  checkout) + compiling one file.
- rescan with nothing changed: the median and max over 20 rescans. Floor,
  filesystem: a stat of every file; Git: reading the branch's ref file.

Targets on a 2-core machine: cold <= 0.5 s, one changed <= 0.05 s, unchanged <= 0.02 s.
The load average is printed at start and at end. Linux only (``floors.py``).

Usage: python benchmarks/bench_repository.py [--files 200] [--workers N]
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402

from labpipe.master.repository.db import ExperimentDB
from labpipe.master.repository.filesystem import FilesystemBackend
from labpipe.master.repository.git import GitBackend
from labpipe.worker.launcher import Launcher

EXPERIMENT = '''\
from labpipe.experiment import *


class Experiment{i}(EnvExperiment):
    """Experiment number {i}"""

    def build(self):
        self.setattr_argument("frequency", NumberValue({i}.0, unit="MHz", scale=1e6))
        self.setattr_argument("repeats", NumberValue(10, precision=0, step=1, type="int"))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "fast"))

    def run(self):
        pass
'''

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@example.org",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@example.org",
           "GIT_CONFIG_GLOBAL": os.devnull}


def git(cwd, *args):
    subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=GIT_ENV,
                   check=True, capture_output=True)


def write_experiments(folder, count):
    for i in range(count):
        path = os.path.join(folder, f"group{i % 10}", f"exp{i:03}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(EXPERIMENT.format(i=i))
    # steady state: files last modified a while ago (fresh ones are re-hashed, see
    # filesystem.py's racy rule; that costs about 2 ms for 200 files)
    then = time.time() - 3600
    for root, _, files in os.walk(folder):
        for name in files:
            os.utime(os.path.join(root, name), (then, then))


def change(folder, i, version):
    path = os.path.join(folder, f"group{i % 10}", f"exp{i:03}.py")
    with open(path, "w") as f:
        f.write(EXPERIMENT.format(i=i).replace("10, precision", f"{10 + version}, precision"))


async def timed(coro):
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


def python_files(folder):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                  for name in names if name.endswith(".py"))


def stat_every_file(folder, repeats=20) -> floors.Floor:
    """Walking the folder and stat-ing each file, as a listing does: median."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for path in python_files(folder):
            os.stat(path)
        times.append(time.perf_counter() - t0)
    return floors.Floor("a stat of every file", statistics.median(times))


def compile_files(paths) -> float:
    """Reading and compiling the files: seconds."""
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    return time.perf_counter() - t0


def read_file(path, repeats=50) -> floors.Floor:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            f.read()
        times.append(time.perf_counter() - t0)
    return floors.Floor("reading the branch's ref file", statistics.median(times))


def file_floors(folder, workers, plain_file, ref_file=None):
    """The floors of one backend's figures (see the module docstring)."""
    paths = python_files(folder)
    one = floors.Floor("compiling one file",
                       statistics.median(compile_files(paths[:1]) for _ in range(20)))
    cold = floors.Floor(f"reading and compiling {len(paths)} files / {workers} processes",
                        compile_files(paths) / workers)
    if ref_file is None:
        stat = stat_every_file(folder)
        return {"cold": cold, "changed": floors.total(stat, one), "unchanged": stat}
    return {"cold": cold, "changed": floors.total(plain_file, one),
            "unchanged": read_file(ref_file)}


def print_figures(name, db, pool_start, cold, changed, unchanged, floor):
    print(f"{name}: " + floors.beside(f"pool start ({db.pool.workers} workers)",
                                      pool_start, floor["fork"]))
    print(f"{name}: " + floors.beside("cold scan", cold, floor["cold"]))
    for label, times, key in (("one changed", changed, "changed"),
                              ("unchanged", unchanged, "unchanged")):
        for which, value in (("median", statistics.median(times)), ("max", max(times))):
            print(f"{name}: " + floors.beside(f"rescan, {label}, {which}", value,
                                              floor[key]))


async def bench(name, lab, backend, count, workers, change_one, floor, file_floor, *,
                launcher):
    db = ExperimentDB(lab, backend, workers=workers, launcher=launcher)
    try:
        pool_start = await timed(db.pool.start())
        cold = await timed(db.start())
        assert len(db.explist.raw_view) == count, db.explist_errors.raw_view
        assert db.pool.examined == count
        changed = []
        for k in range(10):
            await asyncio.to_thread(change_one, (k * 37) % count, k + 1)
            changed.append(await timed(db.scan_repository()))
            assert db.last_scan is not None and len(db.last_scan.examined) == 1, db.last_scan
        unchanged = []
        for _ in range(20):
            unchanged.append(await timed(db.scan_repository()))
            assert db.last_scan is not None and db.last_scan.examined == ()
        print_figures(name, db, pool_start, cold, changed, unchanged,
                      {**floor, **file_floor(db.pool.workers)})
    finally:
        await db.close()
        backend.close()


async def main(count, workers):
    floor = {"python": floors.python_start(), "fork": floors.in_fresh_process()["fork"],
             "plain_file": floors.small_plain_file()}
    launcher = Launcher()
    start = time.perf_counter()
    await asyncio.to_thread(launcher.warm_up)
    print(floors.beside("template start (once per master)", time.perf_counter() - start,
                        floor["python"]))
    tmp = tempfile.mkdtemp(prefix="labpipe-bench-repo-")
    try:
        lab = os.path.join(tmp, "fs")
        repo = os.path.join(lab, "repository")
        write_experiments(repo, count)
        await bench("filesystem", lab, FilesystemBackend(repo), count, workers,
                    lambda i, v: change(repo, i, v), floor,
                    lambda w: file_floors(repo, w, floor["plain_file"]), launcher=launcher)

        lab = os.path.join(tmp, "git")
        bare = os.path.join(lab, "repository")
        clone = os.path.join(tmp, "clone")
        os.makedirs(lab)
        git(lab, "init", "-q", "--bare", bare)
        git(tmp, "clone", "-q", bare, clone)
        write_experiments(clone, count)
        git(clone, "add", "-A")
        git(clone, "commit", "-q", "-m", "experiments")
        git(clone, "push", "-q", "origin", "HEAD:main")

        def commit_one(i, version):
            change(clone, i, version)
            git(clone, "commit", "-q", "-am", f"change {i}")
            git(clone, "push", "-q", "origin", "HEAD:main")
        await bench("git (bare)", lab, GitBackend(bare), count, workers, commit_one, floor,
                    lambda w: file_floors(clone, w, floor["plain_file"],
                                          os.path.join(bare, "refs", "heads", "main")),
                    launcher=launcher)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        await asyncio.to_thread(launcher.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    floors.header("bench_repository.py")
    print(f"{args.files} experiment files")
    asyncio.run(main(args.files, args.workers))
    floors.load_average("end")
