"""The master's handle on one worker process (the child side is ``child.py``).

``Worker`` starts a process from the warm template, sends it one command per stage and
awaits the outcome, answering the child's requests and passing its one-way messages
(logs, dataset updates, CCBs, progress) to the handlers it was given, in the order the
child sent them. A reader thread per worker turns the pipe into an asyncio queue, so the
event loop never blocks on the pipe.

``close()`` stops the process in escalating steps: ask it to exit, then SIGTERM, then
SIGKILL, each with a timeout and logged with the RID. It runs to the end even when the
caller is cancelled.

The worker leads its own process group: once it has ended (closed, or died), the
group is killed, so that nothing the experiment started outlives its run. Starting the
process never blocks the event loop: a spare ready is taken at once, otherwise one is
forked in a thread (a dead template is restarted there too).
"""

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from labpipe.worker import lifetime, output
from labpipe.worker.launcher import Launcher

__all__ = ["Worker", "WorkerError", "WorkerFailed", "WorkerDied", "WorkerTimeout",
           "WorkerClosed"]

logger = logging.getLogger(__name__)


class WorkerError(Exception):
    """A worker could not complete a stage. The message carries the RID."""


class WorkerFailed(WorkerError):
    """The experiment raised an exception; ``traceback`` holds the child's traceback."""

    def __init__(self, message, traceback_text="", results=None):
        super().__init__(message)
        self.traceback = traceback_text
        self.results = results


class WorkerDied(WorkerError):
    """The worker process ended without being asked to."""


class WorkerTimeout(WorkerError):
    """A stage took longer than its configured timeout."""


class WorkerClosed(WorkerError):
    """The worker was closed (the run was deleted) while a stage was under way."""


class Worker:
    """One worker process, driven stage by stage.

    ``handlers`` maps a child message action (``log``, ``update_dataset``, ``get_dataset``,
    ``check_pause``, ...) to a callable taking the message dict; for requests, its
    (possibly awaited) return value is the reply. ``launcher`` starts the process.
    """

    def __init__(self, rid: int, handlers: dict[str, Callable], *, launcher: Launcher,
                 term_timeout: float = 2.0, kill_timeout: float = 2.0):
        self.rid = rid
        self.handlers = handlers
        self.launcher = launcher
        self.term_timeout = term_timeout
        self.kill_timeout = kill_timeout
        self.closed = asyncio.Event()
        self._process = None
        self._conn = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._outcome: asyncio.Future | None = None
        self._consumer: asyncio.Task | None = None
        self._requests: set[asyncio.Task] = set()
        self._close_task: asyncio.Task | None = None
        self._exited: asyncio.Future | None = None
        self._stage: str | None = None
        self._output: output.OutputReader | None = None

    # --- stages -------------------------------------------------------------------

    async def build(self, *, pipeline_name, priority, expid, workdir, lab_dir, results_dir,
                    repo_rev=None, timeout=None) -> dict:
        """Start the process, import and build the experiment. Returns the outcome
        (``class_name``, ``devices`` requested in build, ``bluesky``: whether the
        worker holds bluesky or ophyd; if so, later workers get them preloaded)."""
        if self._process is None:
            await self._start()
        outcome = await self._do({"action": "build", "rid": self.rid,
                                  "pipeline_name": pipeline_name, "priority": priority,
                                  "expid": expid, "workdir": workdir, "lab_dir": lab_dir,
                                  "results_dir": results_dir, "repo_rev": repo_rev},
                                 timeout, "build")
        if outcome.get("bluesky"):
            self.launcher.use_bluesky()
        return outcome

    async def prepare(self, timeout=None):
        await self._do({"action": "prepare"}, timeout, "prepare")

    async def run(self) -> dict:
        """Run; the outcome's action is ``completed``, ``paused`` or ``terminated``."""
        return await self._do({"action": "run"}, None, "run")

    async def resume(self, terminate: bool) -> dict:
        """Answer a pause: continue the run (raising TerminationRequested in it when
        terminate). Same outcomes as run()."""
        return await self._do({"action": "resume", "terminate": terminate}, None, "run")

    async def analyze(self, timeout=None) -> str | None:
        """Analyze, then write the results file (as ARTIQ's analyze stage does, in one
        round trip); returns its path."""
        outcome = await self._do({"action": "analyze"}, timeout, "analyze")
        return outcome.get("results")

    async def validate(self, *, expid, workdir, lab_dir, timeout=None) -> list[str]:
        """A dry run instead of build (``labpipe.worker.validate``): start the process,
        import and build the experiment with checking managers; returns the problems.
        The worker is of no use afterwards: close it."""
        if self._process is None:
            await self._start()
        outcome = await self._do({"action": "validate", "expid": expid, "workdir": workdir,
                                  "lab_dir": lab_dir}, timeout, "validate")
        return list(outcome.get("problems", []))

    # --- process and messages ------------------------------------------------------

    async def _start(self):
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
        reader = threading.Thread(target=self._read_loop, args=(loop,), daemon=True,
                                  name=f"labpipe-worker-{self.rid}")
        reader.start()
        self._consumer = asyncio.create_task(self._consume())

    def _on_exit(self):
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._process.sentinel)
        self._process.join(0)  # reads the exit code the template reported
        self._process.close()
        lifetime.kill_group(self._process.pid)  # what the experiment left running
        if not self._exited.done():
            self._exited.set_result(self._process.exitcode)

    def _read_loop(self, loop):
        conn = self._conn
        fd = output.receive_output_fd(conn)  # the child sends it before anything else
        if fd is not None:
            try:
                loop.call_soon_threadsafe(self._attach_output, fd)
            except RuntimeError:
                os.close(fd)
                return  # the event loop is closed
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError, ValueError):
                batch = None
            except Exception as exc:  # an unpicklable message: report, keep reading
                batch = [{"action": "log", "levelno": logging.ERROR, "name": "labpipe",
                          "message": f"unreadable message from worker: {exc}"}]
            try:
                loop.call_soon_threadsafe(self._inbox.put_nowait, batch)
            except RuntimeError:
                return  # the event loop is closed
            if batch is None:
                return

    def _attach_output(self, fd: int):
        """Read the worker's fds 1 and 2 (``output.py``): each line a print record."""
        if self.closed.is_set():
            os.close(fd)
            return
        handler = self.handlers.get("log")
        if handler is None:  # nobody wants its log (a dry run): still drain the pipe
            handler = lambda msg: None  # noqa: E731
        self._output = output.OutputReader(fd, lambda line: handler(
            {"action": "log", "levelno": logging.INFO, "name": "print", "message": line,
             "created": time.time()}))

    async def _consume(self):
        while True:
            batch = await self._inbox.get()
            if batch is None:
                await self._on_eof()
                return
            for msg in batch:
                await self._dispatch(msg)

    async def _dispatch(self, msg):
        action = msg.get("action")
        if action in ("completed", "paused", "terminated", "exception"):
            if self._outcome is not None and not self._outcome.done():
                self._outcome.set_result(msg)
            return
        handler = self.handlers.get(action)
        if msg.get("request"):
            task = asyncio.create_task(self._answer(handler, msg))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            return
        if handler is None:
            logger.warning("RID %d: worker sent unknown message %r", self.rid, action)
            return
        try:
            result = handler(msg)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("RID %d: handling worker message %r failed", self.rid, action)

    async def _answer(self, handler, msg):
        try:
            if handler is None:
                raise ValueError(f"unknown request {msg.get('action')!r}")
            data = handler(msg)
            if asyncio.iscoroutine(data):
                data = await data
            reply = {"status": "ok", "data": data}
        except Exception as exc:
            reply = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
        self._send(reply)

    def _send(self, msg):
        if self.closed.is_set():
            return
        try:
            self._conn.send(msg)
        except (OSError, ValueError):
            pass  # the process is gone; _on_eof reports it

    async def _on_eof(self):
        code = await self._exited if self._exited is not None else None
        if self.closed.is_set():
            self._fail_outcome(WorkerClosed(f"RID {self.rid}: worker closed"))
        else:
            during = f" during {self._stage}" if self._stage else ""
            self._fail_outcome(WorkerDied(f"RID {self.rid}: the worker process died{during} "
                                          f"({describe_exit(code)})"))

    def _fail_outcome(self, exc: WorkerError):
        """End the stage under way with exc. Its awaiter (if any) gets it; when the
        awaiter is gone (its task was cancelled), nothing warns about it."""
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(exc)
            self._outcome.exception()  # marks it retrieved

    async def _do(self, command, timeout, stage) -> dict:
        if self.closed.is_set():
            raise WorkerClosed(f"RID {self.rid}: worker closed")
        if self._outcome is not None and not self._outcome.done():
            raise RuntimeError(f"RID {self.rid}: a stage is already under way")
        self._outcome = asyncio.get_running_loop().create_future()
        self._stage = stage
        if self._consumer.done():
            raise WorkerDied(f"RID {self.rid}: worker process is gone")
        self._send(command)
        try:
            async with asyncio.timeout(timeout):
                outcome = await asyncio.shield(self._outcome)
        except TimeoutError:
            raise WorkerTimeout(f"RID {self.rid}: {stage} did not finish within {timeout} s "
                                f"(the {stage} timeout)") from None
        if outcome["action"] == "exception":
            raise WorkerFailed(f"RID {self.rid}: {outcome['message']}",
                               outcome.get("traceback", ""), outcome.get("results"))
        return outcome

    # --- stopping ------------------------------------------------------------------

    async def close(self):
        """Stop the process (ask, SIGTERM, SIGKILL); idempotent, survives cancellation."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self):
        self.closed.set()
        self._fail_outcome(WorkerClosed(f"RID {self.rid}: worker closed"))
        if self._process is None:
            return
        try:
            if not self._exited.done():
                try:
                    self._conn.send({"action": "terminate"})
                except (OSError, ValueError):
                    pass
                if not await self._wait_exit(self.term_timeout):
                    logger.warning("RID %d: worker did not exit when asked within %s s, "
                                   "sending SIGTERM", self.rid, self.term_timeout)
                    self._process.terminate()
                    if not await self._wait_exit(self.kill_timeout):
                        logger.warning("RID %d: worker ignored SIGTERM for %s s, "
                                       "sending SIGKILL", self.rid, self.kill_timeout)
                        self._process.kill()
                        await self._exited
        finally:
            for task in list(self._requests):
                task.cancel()
            if self._consumer is not None:
                await asyncio.gather(self._consumer, return_exceptions=True)
            self._conn.close()
            if self._output is not None:
                self._output.close()

    async def _wait_exit(self, timeout) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._exited)
            return True
        except TimeoutError:
            return False


async def _take_in_thread(launcher: Launcher):
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
