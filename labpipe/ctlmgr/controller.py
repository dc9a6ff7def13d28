"""One controller's lifetime: started, watched, restarted, stopped.

- Started with its argument list (no shell) in a new session, so in its own process
  group; stdin is ``/dev/null``, ``PYTHONUNBUFFERED=1`` so that a Python controller's
  prints arrive as they happen; stdout and stderr are forwarded line by line
  (``output.forward``) to ``sink``. On Linux it is sent SIGTERM if the manager dies
  without stopping it (``PR_SET_PDEATHSIG``: a kill -9 of the manager leaves no
  controller holding its port against the manager started next).
- While it runs it is pinged every ``ping_timer`` seconds: a fresh RPC connection to
  ``host:port`` (its ``target``, or the only one) and ``ping()``, which must return
  true within ``ping_timeout`` (a refused connection is tried again within that time:
  a controller still starting has not opened its port yet). A good ping resets the retry timer.
- When it exits, or a ping fails, it is stopped and started again after
  ``retry_timer`` seconds, the timer growing by ``retry_timer_backoff`` at each
  attempt; ``retry_now()`` cuts the wait short.
- ``stop()`` stops it in escalating steps, each bounded by ``term_timeout``: ask
  (RPC ``terminate()``), SIGTERM to its process group, SIGKILL to the group. Whatever
  is left in the group when its leader is gone is killed too. The steps still run
  when the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import ssl as _ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from labpipe.ctlmgr.entries import ControllerSpec
from labpipe.ctlmgr.output import Sink, forward
from labpipe.protocol.rpc import AsyncClient

logger = logging.getLogger("labpipe.ctlmgr")

_PR_SET_PDEATHSIG = 1


def _dies_with(manager: int) -> Callable[[], None] | None:
    """A preexec function making the child get SIGTERM when this process dies (Linux
    only; None elsewhere). Runs in the child between fork and exec: nothing but the
    system call and the check that the manager has not died already."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != manager:  # died before the call: nobody would signal it
            os._exit(1)
    return preexec


@dataclass
class Status:
    """What ``list()`` tells about a controller."""
    name: str
    state: str  # starting | running | waiting | stopping | stopped
    pid: int | None
    starts: int
    last_exit: int | None
    argv: list[str]
    host: str
    port: int

    def as_dict(self) -> dict[str, object]:
        """The PYON-able form of the RPC reply."""
        return dict(self.__dict__)


class Controller:
    """Runs spec until ``stop()``; see the module docstring."""

    def __init__(self, spec: ControllerSpec, sink: Sink,
                 ssl: _ssl.SSLContext | None = None):
        self.spec = spec
        self._sink = sink
        self._ssl = ssl
        self._process: asyncio.subprocess.Process | None = None
        self._retry = asyncio.Event()
        self._stopping = False
        self._retry_timer = spec.retry_timer
        self._task: asyncio.Task[None] | None = None
        self._terminating: tuple[asyncio.subprocess.Process, asyncio.Future[None]] | None = None
        self.state = "starting"
        self.starts = 0
        self.last_exit: int | None = None

    def status(self) -> Status:
        """The controller's current status."""
        process = self._process
        pid = process.pid if process is not None and process.returncode is None else None
        return Status(self.spec.name, self.state, pid, self.starts, self.last_exit,
                      list(self.spec.argv), self.spec.host, self.spec.port)

    def start(self) -> None:
        """Start the supervising task."""
        self._task = asyncio.create_task(self._run(), name=f"controller {self.spec.name}")

    def retry_now(self) -> None:
        """Start again at once when waiting for the retry timer."""
        self._retry.set()

    async def restart(self) -> None:
        """Stop the running process (escalating steps) and start it again at once."""
        self._retry_timer = self.spec.retry_timer
        self._retry.set()
        await self._terminate()

    async def stop(self) -> None:
        """Stop the process and the supervision; returns when both are gone."""
        self._stopping = True
        self._retry.set()
        self.state = "stopping"
        try:
            await self._terminate()
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self.state = "stopped"

    async def _run(self) -> None:
        spec = self.spec
        while not self._stopping:
            self._retry.clear()
            await self._run_once()
            if self._stopping:
                break
            self.state = "waiting"
            logger.info("controller %s: starting again in %.1f s", spec.name,
                        self._retry_timer)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry_timer):
                    await self._retry.wait()
            self._retry_timer *= spec.retry_timer_backoff

    async def _run_once(self) -> None:
        spec = self.spec
        self.state = "starting"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, start_new_session=True, preexec_fn=_dies_with(os.getpid()))
        except OSError as exc:
            logger.error("controller %s: cannot start %r: %s", spec.name, spec.argv[0],
                         exc.strerror or exc)
            return
        self._process = process
        self.starts += 1
        self.state = "running"
        logger.info("controller %s started (pid %d): %s", spec.name, process.pid,
                    " ".join(spec.argv))
        assert process.stdout is not None and process.stderr is not None
        readers = [asyncio.create_task(forward(process.stdout, self._sink, logging.INFO)),
                   asyncio.create_task(forward(process.stderr, self._sink, logging.WARNING))]
        try:
            await self._watch(process)
        finally:
            await self._terminate()
            # the pipes close when the last process of the group is gone
            done, pending = await asyncio.wait(readers, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        spec = self.spec
        while True:
            try:
                async with asyncio.timeout(spec.ping_timer):
                    code = await process.wait()
            except TimeoutError:
                pass
            else:
                self.last_exit = code
                if not self._stopping:
                    logger.warning("controller %s exited with code %d", spec.name, code)
                return
            if await self._ping():
                self._retry_timer = spec.retry_timer
                continue
            if process.returncode is None and not self._stopping:
                logger.warning("controller %s does not answer ping() on %s:%d; "
                               "restarting it", spec.name, spec.host, spec.port)
                return

    async def _ping(self) -> bool:
        client = AsyncClient()
        try:
            async with asyncio.timeout(self.spec.ping_timeout):
                while True:  # a controller still starting refuses: it has ping_timeout
                    try:
                        await client.connect_rpc(self.spec.host, self.spec.port,
                                                 self.spec.target, ssl=self._ssl)
                        break
                    except ConnectionRefusedError:
                        if self._process is None or self._process.returncode is not None:
                            raise
                        await asyncio.sleep(0.05)
                return bool(await client.ping())
        except Exception as exc:
            logger.debug("controller %s: ping failed: %s", self.spec.name, exc)
            return False
        finally:
            client.close_rpc()

    async def _ask_to_terminate(self) -> None:
        client = AsyncClient()
        try:
            await client.connect_rpc(self.spec.host, self.spec.port, self.spec.target,
                                     ssl=self._ssl)
            await client.terminate()
        except Exception as exc:
            logger.debug("controller %s: terminate() failed: %s", self.spec.name, exc)
        finally:
            client.close_rpc()

    async def _terminate(self) -> None:
        """Stop the process in escalating steps; shielded from the caller's cancel."""
        process = self._process
        if process is None:
            return
        if self._terminating is None or self._terminating[0] is not process:
            self._terminating = (process, asyncio.ensure_future(
                self._terminate_steps(process)))
        await asyncio.shield(self._terminating[1])

    async def _terminate_steps(self, process: asyncio.subprocess.Process) -> None:
        spec = self.spec
        timeout = spec.term_timeout
        if process.returncode is None:
            start = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ask_to_terminate()
                    await process.wait()
            if process.returncode is None:
                logger.warning("controller %s did not end when asked within %.1f s; "
                               "SIGTERM", spec.name, time.monotonic() - start)
                _signal_group(process.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await process.wait()
            if process.returncode is None:
                logger.warning("controller %s did not end on SIGTERM within %.1f s; "
                               "SIGKILL", spec.name, timeout)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
            self.last_exit = process.returncode
            logger.info("controller %s stopped (exit code %s)", spec.name,
                        process.returncode)
        _signal_group(process.pid, signal.SIGKILL)  # what is left of its group


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
