"""A pool of worker processes that examine experiment files (parent side).

Each worker runs ``labpipe.worker.examine_child.main`` in a process forked from the run
launcher's template (``labpipe.worker.launcher``), which has preloaded
``labpipe.worker.examine`` and ``examine_child``, so a worker starts in milliseconds. The pool and its workers
speak the examiner's messages of ``labpipe.worker.messages`` (``Examine``,
``CompileContent``; ``ExaminerReady``, ``Examined``), in the workers' encoding.

Contract:

- ``await pool.examine(path, root)`` returns an ``Examined``: the description (and
  whether the file is a black-box script), or the one-line reason the file was
  skipped. ``await pool.check_content(source)`` compiles submitted content the same
  way (an ``Examined`` with no description, or the reason it does not compile), and
  ``await pool.examine_content(source)`` then examines it as a file: no user code is
  ever compiled or imported in the master's process.
- Every request has a time limit (``timeout`` seconds: the worker is killed) and a
  memory limit (``memory`` bytes of address space the request may add,
  ``content_memory`` for content; RLIMIT_AS in the worker, see ``worker/examine_child.py``). It never raises for a bad file: a file that
  raises at import, hangs longer than ``timeout`` seconds (its worker is killed) or
  kills its worker (``os._exit``, a crash in C code) gives a reason, and the pool
  replaces the worker, so the next file is examined normally.
- Up to ``workers`` files are examined in parallel; more callers wait their turn.
- ``examined`` counts the files examined since the pool was made (tests and benchmarks
  use it to check that a rescan examined only what changed).
- Cancelling ``examine`` kills the worker it was using (it is replaced at next use).
- ``await close()`` stops every worker: the pipe is closed (the worker exits at once),
  then SIGKILL after a short grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from labpipe.worker import lifetime
from labpipe.worker.launcher import Launcher
from labpipe.worker.messages import (FROM_EXAMINER, CompileContent, Examine, ExamineContent,
                                     Examined, ExaminerReady, MalformedMessage, decode,
                                     encode)

__all__ = ["Examined", "ExaminerPool", "WorkerStartError", "default_workers",
           "DEFAULT_MEMORY", "DEFAULT_CONTENT_MEMORY"]

logger = logging.getLogger(__name__)


#: Address space an examination may add (importing heavy libraries maps a lot).
DEFAULT_MEMORY = 2 << 30
#: Address space compiling submitted content may add.
DEFAULT_CONTENT_MEMORY = 512 << 20


def default_workers() -> int:
    """Number of parallel examiners: one per CPU, at least two."""
    return max(2, os.cpu_count() or 1)


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerStartError(RuntimeError):
    """An examining process did not start: the pool is broken, not the file."""


class _Worker:
    """One examining process and the parent's end of its pipe (used by one thread).

    Made only once the process said it is ready, so that a process that dies later
    was killed by the file it was examining.
    """

    def __init__(self, launcher: Launcher, start_timeout: float = 60.0) -> None:
        self.process, parent_end = launcher.start_process(
            "labpipe.worker.examine_child:main")
        self.conn = parent_end
        try:
            if not parent_end.poll(start_timeout):
                raise EOFError
            ready = decode(parent_end.recv(), FROM_EXAMINER)
            if not isinstance(ready, ExaminerReady):
                raise MalformedMessage(f"it sent {type(ready).__name__} first")
        except (EOFError, OSError, MalformedMessage) as exc:
            self.kill()
            why = str(exc) if isinstance(exc, MalformedMessage) else \
                _death(self.process.exitcode)
            raise WorkerStartError(
                f"an examining process could not start ({why}); see its error "
                "output") from None

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None and not self.conn.closed

    def call(self, request: Examine | CompileContent | ExamineContent, timeout: float,
             what: str) -> Examined:
        """Send one request to ``examine_child``; ``what`` (a gerund) names the work in
        the reasons of a timeout or a death."""
        examining = isinstance(request, (Examine, ExamineContent))
        try:
            self.conn.send(encode(request))
            if not self.conn.poll(timeout):
                self.kill()
                return Examined(None, f"{what} took longer than {timeout:g} s"
                                      + (" (does the file hang at import?)"
                                         if examining else ""))
            reply = decode(self.conn.recv(), FROM_EXAMINER)
        except (EOFError, OSError):
            self.process.join(1.0)
            self.kill()
            doing = ("importing the file" if isinstance(request, Examine) else
                     "importing the submitted content" if examining else what)
            return Examined(None, f"the examining process died while {doing} "
                                  f"({_death(self.process.exitcode)})")
        except MalformedMessage as exc:
            return Examined(None, f"the examining process answered {what}: {exc}")
        if not isinstance(reply, Examined):
            return Examined(None, f"the examining process answered {what} with "
                                  f"{type(reply).__name__}")
        return reply

    def kill(self) -> None:
        """Kill the process and what it started (blocks up to 5 s: call from a thread)."""
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(5.0)
        lifetime.kill_group(self.process.pid)
        self.conn.close()

    def stop(self, grace: float = 1.0) -> None:
        if not self.conn.closed:
            self.conn.close()
        self.process.join(grace)
        self.kill()


class ExaminerPool:
    """Examines files in ``workers`` processes, each file with a ``timeout`` in seconds
    and ``memory`` bytes (content: ``content_memory``) of added address space; the
    processes come from ``launcher``."""

    def __init__(self, workers: int | None = None, timeout: float = 10.0,
                 memory: int | None = DEFAULT_MEMORY,
                 content_memory: int | None = DEFAULT_CONTENT_MEMORY, *,
                 launcher: Launcher):
        self.launcher = launcher
        self.workers = workers or default_workers()
        self.timeout = timeout
        self.memory = memory
        self.content_memory = content_memory
        #: Number of files examined so far.
        self.examined = 0
        #: The device database's keys, given to experiments examined (so that plan
        #: arguments can offer them as choices).
        self.device_keys: tuple[str, ...] = ()
        self._idle: asyncio.Queue[_Worker | None] | None = None
        self._all: set[_Worker] = set()
        self._closed = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the workers (in parallel); returns when they are all up."""
        async with self._start_lock:
            if self._idle is not None:
                return
            started = await asyncio.gather(
                *(asyncio.to_thread(self._spawn) for _ in range(self.workers)),
                return_exceptions=True)
            self._idle = asyncio.Queue()
            for worker in started:
                self._idle.put_nowait(None if isinstance(worker, BaseException) else worker)
        failures = [w for w in started if isinstance(w, BaseException)]
        if len(failures) == len(started):
            raise failures[0]
        for failure in failures:
            logger.error("%s", failure)

    def _spawn(self) -> _Worker:
        worker = _Worker(self.launcher)
        self._all.add(worker)
        return worker

    async def examine(self, path: str, root: str, timeout: float | None = None) -> Examined:
        """Examine the file ``path`` (in folder ``root``) in a worker; see the module docstring."""
        request = Examine(path, root, self.device_keys, self.memory)
        result = await self._request(request, timeout, "examining")
        self.examined += 1
        if not result.ok:
            logger.debug("examining %s: %s", path, result.error)
        return result

    async def check_content(self, source: str, timeout: float | None = None) -> Examined:
        """Compile submitted content in a worker (never run it); ``error`` says why it
        does not compile (or needs too much time or memory)."""
        return await self._request(CompileContent(source, self.content_memory), timeout,
                                   "compiling the submitted content")

    async def examine_content(self, source: str, timeout: float | None = None) -> Examined:
        """Examine submitted content as a file (its classes and their arguments); a
        black-box script is not imported (``script``). Compile it with
        ``check_content`` first: this request has the examination's memory limit."""
        return await self._request(ExamineContent(source, self.device_keys, self.memory),
                                   timeout, "examining the submitted content")

    async def _request(self, request: Examine | CompileContent | ExamineContent,
                       timeout: float | None, what: str) -> Examined:
        if self._closed:
            raise RuntimeError("the examiner pool is closed")
        await self.start()
        assert self._idle is not None
        worker = await self._idle.get()
        try:
            if worker is None or not worker.alive:
                if worker is not None:
                    self._all.discard(worker)
                worker = None
                worker = await asyncio.to_thread(self._spawn)
            try:
                return await asyncio.to_thread(
                    worker.call, request, self.timeout if timeout is None else timeout,
                    what)
            except asyncio.CancelledError:
                # the thread may still be calling it; killing it ends that call, and
                # the join after the kill is left to the default executor
                worker.process.kill()
                asyncio.get_running_loop().run_in_executor(None, worker.kill)
                raise
        finally:
            self._idle.put_nowait(worker)

    async def close(self) -> None:
        """Stop every worker process."""
        self._closed = True
        workers, self._all = list(self._all), set()
        if workers:
            await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
