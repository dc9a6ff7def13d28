"""Benchmark repository scans: 200 small experiment files, filesystem and Git backends.

For each backend, in a temporary lab, prints:

- cold scan: the first scan of 200 files (the examining processes already started,
  as they are once the master runs; their start is printed on its own);
- rescan after one file changed: the median and max over 10 rescans, each after
  changing another file (on Git: committing and pushing it with the ``git`` command
  line, which is not timed);
- rescan with nothing changed: the median and max over 20 rescans.

Targets on a 2-core machine: cold <= 0.5 s, one changed <= 0.05 s, unchanged <= 0.02 s.

Usage: python benchmarks/bench_repository.py [--files 200] [--workers N]
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time

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


def ms(seconds):
    return f"{seconds * 1e3:7.1f} ms"


async def bench(name, launcher, lab, backend, count, workers, change_one):
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
            assert len(db.last_scan.examined) == 1, db.last_scan
        unchanged = []
        for _ in range(20):
            unchanged.append(await timed(db.scan_repository()))
            assert db.last_scan.examined == ()
        print(f"{name:<11} pool start ({db.pool.workers} workers) {ms(pool_start)} | "
              f"cold scan {ms(cold)} | one changed median {ms(statistics.median(changed))} "
              f"max {ms(max(changed))} | unchanged median {ms(statistics.median(unchanged))} "
              f"max {ms(max(unchanged))}")
    finally:
        await db.close()
        backend.close()


async def main(count, workers):
    launcher = Launcher()
    start = time.perf_counter()
    await asyncio.to_thread(launcher.warm_up)
    print(f"forkserver template start (once per master): {ms(time.perf_counter() - start)}")
    tmp = tempfile.mkdtemp(prefix="labpipe-bench-repo-")
    try:
        lab = os.path.join(tmp, "fs")
        repo = os.path.join(lab, "repository")
        write_experiments(repo, count)
        await bench("filesystem", launcher, lab, FilesystemBackend(repo), count, workers,
                    lambda i, v: change(repo, i, v))

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
        await bench("git (bare)", launcher, lab, GitBackend(bare), count, workers,
                    commit_one)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        await asyncio.to_thread(launcher.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    print(f"{args.files} experiment files, {os.cpu_count()} CPU(s)")
    asyncio.run(main(args.files, args.workers))
