"""The lab's Dask scheduler, as the master knows it (``docs/dask.md``).

``DaskCluster(setting, records)`` is entered by the master at its start and left at
its stop, after the scheduler (no run's analysis is left waiting on it):

- ``setting`` None: the lab has no cluster; ``address()`` refuses with one line.
- ``"local"``: the master starts ``python -m labpipe.master.dask_cluster`` (this
  module's ``main``), a process of its own group running a ``distributed.LocalCluster``
  on 127.0.0.1, recorded with the master's processes (a master started after a kill -9
  of this one ends it) and watching the master's PID (it exits when the master is
  gone). Its first line on stdout is its scheduler's address. The master's stop ends
  it: SIGTERM to its group, then SIGKILL (its Dask workers are in the group).
- anything else: the address of a scheduler the lab runs (``tcp://host:8786``,
  ``tls://...``); checked for its form only: a scheduler that is not there fails the
  runs that offload, never the master.

``address()`` is what a worker's ``GetDaskScheduler`` request gets.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labpipe.master.process_records import ProcessRecords

__all__ = ["DaskCluster", "check_setting", "main", "START_TIMEOUT"]

logger = logging.getLogger(__name__)

#: Seconds the local cluster may take to say its address.
START_TIMEOUT = 60.0
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
_NO_CLUSTER = ("this lab has no Dask cluster: set dask_scheduler in labpipe.toml's "
               "[master] (\"local\" or \"tcp://HOST:PORT\") or labpipe-master "
               "--dask-scheduler")


def check_setting(setting: str) -> str:
    """setting if it is ``local`` or a scheduler address, else ``ValueError`` (one line)."""
    if setting == "local" or _ADDRESS.fullmatch(setting):
        return setting
    raise ValueError(f"dask_scheduler: expected \"local\" or a scheduler address such as "
                     f"tcp://HOST:8786, not {setting!r}")


class DaskCluster:
    """The lab's Dask scheduler: none, one the lab runs, or a local cluster the master
    starts and stops (see the module docstring)."""

    def __init__(self, setting: str | None, records: ProcessRecords | None = None, *,
                 processes: bool = True) -> None:
        self.setting = None if setting is None else check_setting(setting)
        self._records = records
        self._processes = processes
        self._process: asyncio.subprocess.Process | None = None
        self._address: str | None = None if self.setting == "local" else self.setting

    def address(self) -> str:
        """The scheduler's address; ``LookupError`` when the lab has none."""
        if self._address is None:
            raise LookupError(_NO_CLUSTER)
        return self._address

    @property
    def pid(self) -> int | None:
        """The local cluster's process (None: not started here)."""
        return None if self._process is None else self._process.pid

    async def __aenter__(self) -> DaskCluster:
        if self.setting == "local":
            await self._start_local()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def _start_local(self) -> None:
        if importlib.util.find_spec("distributed") is None:
            raise RuntimeError("dask_scheduler = \"local\" needs the distributed package "
                               "(pip install 'labpipe[dask]')")
        command = [sys.executable, "-m", "labpipe.master.dask_cluster",
                   "--parent-pid", str(os.getpid())]
        if not self._processes:
            command.append("--threads")
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            process_group=0)
        self._process = process
        if self._records is not None:
            self._records.add(process.pid)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = (await process.stdout.readline()).decode("utf-8", "replace").strip()
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"the local Dask cluster did not start within "
                               f"{START_TIMEOUT:g} s") from None
        except BaseException:  # cancelled: the exit stack will not call our __aexit__
            await asyncio.shield(self.stop())
            raise
        if not _ADDRESS.fullmatch(line):
            await self.stop()
            raise RuntimeError("the local Dask cluster did not start (its log above "
                               "says why)")
        self._address = line
        logger.info("local Dask cluster at %s (pid %d)", line, process.pid)

    async def stop(self, timeout: float = 5.0) -> None:
        """End the local cluster's process group (SIGTERM, then SIGKILL); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                async with asyncio.timeout(timeout):
                    await process.wait()
                break
            except TimeoutError:
                logger.warning("the local Dask cluster did not stop within %g s after "
                               "%s", timeout, sig.name)
        await process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # a Dask worker it left behind
        except ProcessLookupError:
            pass


# --- the local cluster's process ---------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m labpipe.master.dask_cluster",
        description="a distributed.LocalCluster for labpipe-master (dask_scheduler = "
                    "\"local\"): prints its scheduler's address, runs until SIGTERM or "
                    "until PID --parent-pid is gone")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID")
    p.add_argument("--threads", action="store_true",
                   help="one worker of threads in this process (processes=False)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="N worker processes (default: LocalCluster's, one per core)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run a LocalCluster on 127.0.0.1 until told to stop (see the module docstring)."""
    args = _parser().parse_args(argv)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master stops it, in order
    # the master reads one line, the address, from stdout: what the cluster and its
    # tasks print goes to stderr (the master's), never into a pipe nobody reads (the
    # copy of the pipe is not inherited by the Dask worker processes)
    address_fd = os.dup(1)
    os.dup2(2, 1)
    from distributed import LocalCluster
    kwargs: dict[str, object] = (
        {"processes": False, "n_workers": 1, "threads_per_worker": 4}
        if args.threads else {})
    if args.workers is not None and not args.threads:
        kwargs["n_workers"] = args.workers
    cluster = LocalCluster(host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                           protocol="tcp", **kwargs)
    try:
        with os.fdopen(address_fd, "w") as out:
            print(cluster.scheduler_address, file=out, flush=True)
        while not stop and (args.parent_pid is None or os.getppid() == args.parent_pid):
            time.sleep(0.2)
    finally:
        # closing waits for the tasks still running in the cluster's threads (an
        # analysis whose run was deleted): give it a moment, then go, workers and all;
        # with the master gone, nobody waits for a tidy close
        if stop:
            closing = threading.Thread(target=cluster.close, kwargs={"timeout": 2},
                                       daemon=True)
            closing.start()
            closing.join(3)
        sys.stdout.flush()
        if os.getpgid(0) == os.getpid():  # the group the master made: its Dask workers
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(0)


if __name__ == "__main__":
    main()
