"""The master's handle on one worker process (the child side is ``child.py``).

``Worker`` starts a process from the warm template, sends it one command per stage and
awaits the outcome, answering the child's requests and passing its one-way messages
(logs, dataset updates, CCBs, progress) to the ``Handlers`` it was given, in the order
the child sent them. The messages are those of ``messages.py``. A reader thread per
worker decodes what the pipe brings into an asyncio queue, so the event loop never
blocks on the pipe; a malformed message is logged in one line with the RID (a
malformed request is refused with that line), never the master's end.

``close()`` stops the process in escalating steps: ask it to exit, then SIGTERM, then
SIGKILL, each with a timeout and logged with the RID. It runs to the end even when the
caller is cancelled.

The worker leads its own process group: once it has ended (closed, or died), the
group is killed, so that nothing the experiment started outlives its run. Starting the
process never blocks the event loop: a spare ready is taken at once, otherwise one is
forked in a thread (a dead template is restarted there too).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from labpipe.worker import lifetime, messages, output
from labpipe.worker.launcher import Launcher
from labpipe.worker.messages import (FROM_WORKER, MalformedMessage, Message, OneWay,
                                     Outcome, Request)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from labpipe.worker.forkserver import ForkedProcess

__all__ = ["Handlers", "Worker", "WorkerError", "WorkerFailed", "WorkerDied",
           "WorkerTimeout", "WorkerClosed"]

M = TypeVar("M", bound=Message)

logger = logging.getLogger(__name__)


class WorkerError(Exception):
    """A worker could not complete a stage. The message carries the RID."""


class WorkerFailed(WorkerError):
    """The experiment raised an exception; ``traceback`` holds the child's traceback."""

    def __init__(self, message: str, traceback_text: str = "",
                 results: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback_text
        self.results = results


class WorkerDied(WorkerError):
    """The worker process ended without being asked to."""


class WorkerTimeout(WorkerError):
    """A stage took longer than its configured timeout."""


class WorkerClosed(WorkerError):
    """The worker was closed (the run was deleted) while a stage was under way."""


class Handlers:
    """The master's dispatch table for a worker: worker message type -> handler.

    A handler takes the message; for a ``Request`` its return value (awaited if it is
    awaitable) is the ``Reply``, an exception it raises the ``Refused`` line; for a
    ``OneWay`` message it returns nothing (an exception is logged). A request with no
    handler is refused, a one-way message with none logged and dropped.

    Tables are built with ``on`` and composed explicitly: ``merged`` (each type from
    one side only: a type in both is a ValueError) and ``only`` (a part of a table).
    """

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[type[Message], Callable[[Any], Any]] = {}

    def on(self, kind: type[M], handler: Callable[[M], Any]) -> Handlers:
        """Register the handler of kind (a worker request or one-way message); returns
        the table. A kind registered twice is a ValueError."""
        if not (isinstance(kind, type) and issubclass(kind, (Request, OneWay))
                and kind in FROM_WORKER):
            raise ValueError(f"{kind!r} is not a worker request or one-way message")
        if kind in self._table:
            raise ValueError(f"{kind.__name__} has a handler already")
        self._table[kind] = handler
        return self

    def get(self, kind: type[Message]) -> Callable[[Any], Any] | None:
        """The handler of kind, or None."""
        return self._table.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._table

    def kinds(self) -> frozenset[type[Message]]:
        """The message types that have a handler."""
        return frozenset(self._table)

    def merged(self, other: Handlers) -> Handlers:
        """A new table with the handlers of both (ValueError if a type is in both)."""
        both = self._table.keys() & other._table.keys()
        if both:
            raise ValueError("handled twice: " + ", ".join(sorted(k.__name__ for k in both)))
        table = Handlers()
        table._table = {**self._table, **other._table}
        return table

    def only(self, *kinds: type[Message]) -> Handlers:
        """A new table with the handlers of kinds (those this table has)."""
        table = Handlers()
        table._table = {k: self._table[k] for k in kinds if k in self._table}
        return table

    def missing(self) -> list[type[Message]]:
        """The worker requests and one-way messages this table has no handler for."""
        return [k for k in FROM_WORKER.classes
                if issubclass(k, (Request, OneWay)) and k not in self._table]


class Worker:
    """One worker process, driven stage by stage; ``handlers`` answers what it asks,
    ``launcher`` starts the process."""

    def __init__(self, rid: int, handlers: Handlers, *, launcher: Launcher,
                 term_timeout: float = 2.0, kill_timeout: float = 2.0) -> None:
        self.rid = rid
        self.handlers = handlers
        self.launcher = launcher
        self.term_timeout = term_timeout
        self.kill_timeout = kill_timeout
        self.closed = asyncio.Event()
        self._process: ForkedProcess | None = None
        self._conn: Connection | None = None
        self._inbox: asyncio.Queue[list[Message | MalformedMessage] | None] = \
            asyncio.Queue()
        self._outcome: asyncio.Future[Outcome] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._exited: asyncio.Future[int | None] | None = None
        self._stage: str | None = None
        self._output: output.OutputReader | None = None

    # --- stages -------------------------------------------------------------------

    async def build(self, *, pipeline_name: str, priority: int, expid: dict[str, Any],
                    workdir: str | None, lab_dir: str | None, results_dir: str,
                    repo_rev: str | None = None,
                    timeout: float | None = None) -> messages.Built:
        """Start the process, import and build the experiment. Returns the outcome
        (``class_name``, ``devices`` requested in build, ``bluesky``: whether the
        worker holds bluesky or ophyd; if so, later workers get them preloaded)."""
        if self._process is None:
            await self._start()
        outcome = await self._do(
            messages.Build(self.rid, pipeline_name, priority, expid, workdir, lab_dir,
                           results_dir, repo_rev), timeout, "build", (messages.Built,))
        built = cast(messages.Built, outcome)
        if built.bluesky:
            self.launcher.use_bluesky()
        return built

    async def prepare(self, timeout: float | None = None) -> None:
        await self._do(messages.Prepare(), timeout, "prepare", (messages.Completed,))

    async def run(self) -> messages.Completed | messages.Paused | messages.Terminated:
        """Run; the outcome is ``Completed``, ``Paused`` or ``Terminated``."""
        return cast(messages.Completed | messages.Paused | messages.Terminated,
                    await self._do(messages.Run(), None, "run", _RUN_OUTCOMES))

    async def resume(self, terminate: bool
                     ) -> messages.Completed | messages.Paused | messages.Terminated:
        """Answer a pause: continue the run (raising TerminationRequested in it when
        terminate). Same outcomes as run()."""
        return cast(messages.Completed | messages.Paused | messages.Terminated,
                    await self._do(messages.Resume(terminate), None, "run", _RUN_OUTCOMES))

    async def analyze(self, timeout: float | None = None
                      ) -> str | None | messages.AnalysisOffloaded:
        """Analyze, then write the results file (as ARTIQ's analyze stage does, in one
        round trip); returns its path. An ``@offload_analyze`` experiment's answer is
        ``AnalysisOffloaded`` instead, at once: then ``analysis_done()`` awaits the end."""
        outcome = await self._do(messages.Analyze(), timeout, "analyze",
                                 (messages.Completed, messages.Terminated,
                                  messages.AnalysisOffloaded))
        if isinstance(outcome, messages.AnalysisOffloaded):
            return outcome
        return cast(messages.Completed | messages.Terminated, outcome).results

    async def analysis_done(self) -> messages.AnalysisDone:
        """The end of an analysis offloaded to the Dask cluster (after ``analyze()``
        returned ``AnalysisOffloaded``): ``WorkerFailed`` when it failed there."""
        if self._stage != _OFFLOADED_STAGE or self._outcome is None:
            raise RuntimeError(f"RID {self.rid}: no analysis is offloaded")
        outcome = await asyncio.shield(self._outcome)
        if isinstance(outcome, messages.Failed):
            raise WorkerFailed(f"RID {self.rid}: {outcome.message}", outcome.traceback,
                               outcome.results)
        if not isinstance(outcome, messages.AnalysisDone):
            raise WorkerError(f"RID {self.rid}: the worker ended the offloaded analysis "
                              f"with {messages.tag_of(outcome)!r}")
        return outcome

    async def validate(self, *, expid: dict[str, Any], workdir: str | None,
                       lab_dir: str | None, timeout: float | None = None) -> list[str]:
        """A dry run instead of build (``labpipe.worker.validate``): start the process,
        import and build the experiment with checking managers; returns the problems.
        The worker is of no use afterwards: close it."""
        if self._process is None:
            await self._start()
        outcome = await self._do(messages.Validate(expid, workdir, lab_dir), timeout,
                                 "validate", (messages.Validated,))
        return list(cast(messages.Validated, outcome).problems)

    # --- process and messages ------------------------------------------------------

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        item = self.launcher.take_ready_worker()
        if item is None:
            item = await _take_in_thread(self.launcher)
        if self.closed.is_set():  # closed while it was starting
            item[1].close()
            raise WorkerClosed(f"RID {self.rid}: worker closed")
        self._process, self._conn = item
        self._exited = loop.create_future()
        loop.add_reader(self._process.sentinel, self._on_exit)
        reader = threading.Thread(target=self._read_loop, args=(loop, self._conn),
                                  daemon=True, name=f"labpipe-worker-{self.rid}")
        reader.start()
        self._consumer = asyncio.create_task(self._consume())

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        process = self._process
        assert process is not None and self._exited is not None
        loop.remove_reader(process.sentinel)
        process.join(0)  # reads the exit code the template reported
        process.close()
        lifetime.kill_group(process.pid)  # what the experiment left running
        if not self._exited.done():
            self._exited.set_result(process.exitcode)

    def _read_loop(self, loop: asyncio.AbstractEventLoop, conn: Connection) -> None:
        """The reader thread: decodes each batch the worker sends, in order."""
        fd = output.receive_output_fd(conn)  # the child sends it before anything else
        if fd is not None:
            try:
                loop.call_soon_threadsafe(self._attach_output, fd)
            except RuntimeError:
                os.close(fd)
                return  # the event loop is closed
        while True:
            batch: list[Message | MalformedMessage] | None
            try:
                batch = _decode_batch(conn.recv())
            except (EOFError, OSError, ValueError):
                batch = None
            except Exception as exc:  # an unpicklable message: report, keep reading
                batch = [MalformedMessage(f"unreadable message from worker: "
                                          f"{type(exc).__name__}: {_one_line(exc)}")]
            try:
                loop.call_soon_threadsafe(self._inbox.put_nowait, batch)
            except RuntimeError:
                return  # the event loop is closed
            if batch is None:
                return

    def _attach_output(self, fd: int) -> None:
        """Read the worker's fds 1 and 2 (``output.py``): each line a print record."""
        if self.closed.is_set():
            os.close(fd)
            return
        handler = self.handlers.get(messages.Log)
        if handler is None:  # nobody wants its log (a dry run): still drain the pipe
            handler = _ignore
        self._output = output.OutputReader(fd, lambda line: handler(
            messages.Log(logging.INFO, "print", line, time.time())))

    async def _consume(self) -> None:
        while True:
            batch = await self._inbox.get()
            if batch is None:
                await self._on_eof()
                return
            for msg in batch:
                await self._dispatch(msg)

    async def _dispatch(self, msg: Message | MalformedMessage) -> None:
        if isinstance(msg, Outcome):
            if self._outcome is not None and not self._outcome.done():
                self._outcome.set_result(msg)
            if isinstance(msg, messages.AnalysisOffloaded):
                # the command's second outcome follows: it must find its future,
                # however soon it comes
                self._outcome = asyncio.get_running_loop().create_future()
                self._stage = _OFFLOADED_STAGE
            return
        if isinstance(msg, MalformedMessage):
            logger.error("RID %d: %s", self.rid, msg)
            if msg.kind is not None and issubclass(msg.kind, Request):
                self._send(messages.Refused(str(msg)))  # the worker waits for an answer
            return
        handler = self.handlers.get(type(msg))
        if isinstance(msg, Request):
            task = asyncio.create_task(self._answer(handler, msg))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            return
        if handler is None:
            logger.warning("RID %d: no handler for worker message %r", self.rid,
                           messages.tag_of(msg))
            return
        try:
            result = handler(msg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("RID %d: handling worker message %r failed", self.rid,
                             messages.tag_of(msg))

    async def _answer(self, handler: Callable[[Any], Any] | None,
                      request: Request[Any]) -> None:
        answer: messages.Answer
        try:
            if handler is None:
                raise ValueError(f"the master does not answer {messages.tag_of(request)!r} "
                                 f"here")
            data = handler(request)
            if inspect.isawaitable(data):
                data = await data
            answer = messages.Reply(data)
        except Exception as exc:
            answer = messages.Refused(f"{type(exc).__name__}: {exc}")
        self._send(answer)

    def _send(self, msg: Message) -> None:
        if self.closed.is_set() or self._conn is None:
            return
        try:
            self._conn.send(messages.encode(msg))
        except (OSError, ValueError):
            pass  # the process is gone; _on_eof reports it

    async def _on_eof(self) -> None:
        code = await self._exited if self._exited is not None else None
        if self.closed.is_set():
            self._fail_outcome(WorkerClosed(f"RID {self.rid}: worker closed"))
        else:
            during = f" during {self._stage}" if self._stage else ""
            self._fail_outcome(WorkerDied(f"RID {self.rid}: the worker process died{during} "
                                          f"({describe_exit(code)})"))

    def _fail_outcome(self, exc: WorkerError) -> None:
        """End the stage under way with exc. Its awaiter (if any) gets it; when the
        awaiter is gone (its task was cancelled), nothing warns about it."""
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(exc)
            self._outcome.exception()  # marks it retrieved

    async def _do(self, command: messages.Command, timeout: float | None, stage: str,
                  expect: tuple[type[Outcome], ...]) -> Outcome:
        """Send command and await its outcome, one of expect (``Failed`` raises
        WorkerFailed, any other outcome WorkerError)."""
        if self.closed.is_set():
            raise WorkerClosed(f"RID {self.rid}: worker closed")
        if self._outcome is not None and not self._outcome.done():
            raise RuntimeError(f"RID {self.rid}: a stage is already under way")
        self._outcome = asyncio.get_running_loop().create_future()
        self._stage = stage
        if self._consumer is None or self._consumer.done():
            raise WorkerDied(f"RID {self.rid}: worker process is gone")
        self._send(command)
        try:
            async with asyncio.timeout(timeout):
                outcome = await asyncio.shield(self._outcome)
        except TimeoutError:
            raise WorkerTimeout(f"RID {self.rid}: {stage} did not finish within {timeout} s "
                                f"(the {stage} timeout)") from None
        if isinstance(outcome, messages.Failed):
            raise WorkerFailed(f"RID {self.rid}: {outcome.message}", outcome.traceback,
                               outcome.results)
        if not isinstance(outcome, expect):
            raise WorkerError(f"RID {self.rid}: the worker ended {stage} with "
                              f"{messages.tag_of(outcome)!r}, expected "
                              + " or ".join(repr(messages.tag_of(k)) for k in expect))
        return outcome

    # --- stopping ------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the process (ask, SIGTERM, SIGKILL); idempotent, survives cancellation."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self.closed.set()
        self._fail_outcome(WorkerClosed(f"RID {self.rid}: worker closed"))
        process, conn, exited = self._process, self._conn, self._exited
        if process is None or conn is None or exited is None:
            return
        try:
            if not exited.done():
                try:
                    conn.send(messages.encode(messages.Terminate()))
                except (OSError, ValueError):
                    pass
                if not await self._wait_exit(self.term_timeout):
                    logger.warning("RID %d: worker did not exit when asked within %s s, "
                                   "sending SIGTERM", self.rid, self.term_timeout)
                    process.terminate()
                    if not await self._wait_exit(self.kill_timeout):
                        logger.warning("RID %d: worker ignored SIGTERM for %s s, "
                                       "sending SIGKILL", self.rid, self.kill_timeout)
                        process.kill()
                        await exited
        finally:
            for task in list(self._requests):
                task.cancel()
            if self._consumer is not None:
                await asyncio.gather(self._consumer, return_exceptions=True)
            conn.close()
            if self._output is not None:
                self._output.close()

    async def _wait_exit(self, timeout: float) -> bool:
        assert self._exited is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._exited)
            return True
        except TimeoutError:
            return False


#: The stage of a worker whose analysis runs on the Dask cluster.
_OFFLOADED_STAGE = "analyze (offloaded to the Dask cluster)"

#: What a run (or resume) may end with, besides ``Failed``.
_RUN_OUTCOMES = (messages.Completed, messages.Paused, messages.Terminated)


def _decode_batch(batch: object) -> list[Message | MalformedMessage]:
    """The messages of a batch the worker sent (a list of wire objects); what does not
    decode is there as its MalformedMessage, in its place."""
    if type(batch) is not list:
        return [MalformedMessage(f"malformed batch from worker: a {type(batch).__name__}, "
                                 "not a list")]
    decoded: list[Message | MalformedMessage] = []
    for wire in batch:
        try:
            decoded.append(messages.decode(wire, FROM_WORKER))
        except MalformedMessage as e:
            decoded.append(e)
    return decoded


def _ignore(msg: Message) -> None:
    pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


async def _take_in_thread(launcher: Launcher) -> tuple[ForkedProcess, Connection]:
    """``launcher.take_worker`` in a thread; a process it starts after its caller was
    cancelled is closed rather than leaked."""
    future = asyncio.ensure_future(asyncio.to_thread(launcher.take_worker))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def close_unused(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                f.result()[1].close()
        future.add_done_callback(close_unused)
        raise


def describe_exit(code: int | None) -> str:
    """How a worker process ended, in words (a SIGKILL nobody sent: the OOM killer?)."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name}: out of memory (the kernel's OOM killer), or " \
                   "killed from outside"
        return f"killed by {name}"
    if code == 255:
        return "exit code unknown: its template process died"
    return f"exit code {code}"
