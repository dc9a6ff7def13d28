"""A pipeline: its runs and the three stage loops that move them.

Per pipeline, a prepare loop (build + prepare, one run at a time), a run loop (one run
at a time) and an analyze loop (analyze + results) overlap: while run N runs, run N+1
prepares and run N-1 analyzes. A run's ``pause()`` yields only when a prepared run that
could start now outranks it (``Scheduler.must_yield``); otherwise it is answered at
once and the run never shows as ``paused``. Each loop asks ``precedence`` which run is next and
otherwise waits for the pool to change. A run that fails, is terminated or deleted leaves
through ``Scheduler.end_run``; stage loops never die of a run's failure. An analysis
offloaded to the Dask cluster frees the analyze stage at once (``offloaded.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from labpipe.master import precedence
from labpipe.master.instructions import execute_when_due, instruction_of
from labpipe.master.offloaded import finish_offloaded
from labpipe.master.precedence import RunStatus
from labpipe.master.run import Run, RunEnd
from labpipe.master.run_pool import RunPool
from labpipe.worker.handle import Worker, WorkerClosed, WorkerError, WorkerFailed
from labpipe.worker.messages import AnalysisOffloaded, Completed, Paused, Terminated

if TYPE_CHECKING:
    from labpipe.master.scheduler import Scheduler

__all__ = ["Pipeline", "StateChanged"]

logger = logging.getLogger(__name__)


def _worker_of(run: Run) -> Worker:
    """The worker of a run past its build (``Scheduler.build_run`` gave it one)."""
    if run.worker is None:
        raise WorkerError(f"RID {run.rid} has no worker")
    return run.worker


class StateChanged:
    """A broadcast wake-up: ``notify()`` releases everyone waiting at that moment."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for the next notify(), or at most timeout seconds."""
        event = self._event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass


class Pipeline:
    """The runs of one pipeline and the stage loops that move them."""

    def __init__(self, name: str, scheduler: Scheduler):
        self.name = name
        self.scheduler = scheduler
        self.runs = RunPool()
        self.state_changed = StateChanged()
        self._tasks: list[asyncio.Task[None]] = []
        #: runs' offloaded analyses being awaited (``offloaded.py``)
        self._offloaded: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the stage loops, as tasks of the scheduler's supervised ``tasks``."""
        for loop in (self._prepare_loop, self._run_loop, self._analyze_loop):
            self._tasks.append(self.scheduler.tasks.spawn(
                self._guarded(loop), loop.__name__, context=f"pipeline {self.name}"))

    async def _guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a stage loop forever: a bug in it is logged, never the pipeline's end."""
        while True:
            try:
                await loop()
            except Exception:
                logger.exception("pipeline %s: %s failed; restarting it", self.name,
                                 loop.__name__)
                await asyncio.sleep(0.1)  # do not spin if it fails at once again

    async def stop(self) -> None:
        """Cancel the stage loops (runs are closed by the scheduler)."""
        tasks = [*self._tasks, *self._offloaded]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the loops ----------------------------------------------------------------

    async def _prepare_loop(self) -> None:
        while True:
            candidate = self.runs.next_to_prepare(time.time())
            if self.scheduler.queue.states.is_held(self.name) and not (
                    isinstance(candidate, Run) and candidate.immediate):
                await self.state_changed.wait()  # only a run of execute_now goes
                continue
            if not isinstance(candidate, Run):
                await self.state_changed.wait(candidate)
                continue
            if not self.scheduler.may_prepare(candidate):
                await self.state_changed.wait()
                continue
            if instruction_of(candidate.expid) is not None:  # no worker: instructions.py
                if not await execute_when_due(self.scheduler, candidate):
                    await self.state_changed.wait()
                continue
            run = candidate
            if run.flush:
                run.status = RunStatus.flushing
                while not run.deleting and not (precedence.flush_done(run, self.runs.values())
                                                and self.scheduler.may_prepare(run)):
                    await self.state_changed.wait()
                if run.deleting:
                    continue
            # that the run was taken is committed while the worker builds (no sync in
            # series with every run): "preparing" is published once it is on disk, and
            # the run is prepare_done (the run stage may start it) only after that, so a
            # restarted master ends it as interrupted, never runs it a second time
            noted = self.scheduler.note_preparing(run)
            try:
                await self.scheduler.build_run(run)
                await _worker_of(run).prepare()
                await noted
            except Exception as exc:  # OSError, ForkServerError...: never stranded
                await asyncio.gather(noted, return_exceptions=True)
                await self.stage_failed(run, "prepare", exc)
                continue
            run.status = RunStatus.prepare_done

    async def _run_loop(self) -> None:
        while True:
            await self.scheduler.queue.settle(self.name)  # hold(after_current) applies
            run = self.runs.next_to_run()
            if run is None or not self.scheduler.may_start_run(run):
                await self.state_changed.wait()
                continue
            resuming = run.status == RunStatus.paused
            run.status = RunStatus.running
            if not resuming:
                self.scheduler.progress.run_started(run)
            try:
                if resuming:
                    outcome = await self._resume(run)
                else:
                    outcome = await _worker_of(run).run()
                while isinstance(outcome, Paused) and not self.scheduler.must_yield(run):
                    # nothing that could start now outranks it: pause() returns at once
                    # and the run was never paused (no "paused" status, nor in history)
                    outcome = await self._resume(run)
            except Exception as exc:  # OSError, ForkServerError...: never stranded
                await self.stage_failed(run, "run", exc)
                continue
            if isinstance(outcome, Paused):
                run.status = RunStatus.paused
            elif isinstance(outcome, Terminated):
                logger.info("RID %d: terminated on request", run.rid)
                await self.scheduler.end_run(run, RunEnd("terminated",
                                                         results=outcome.results))
            else:
                run.status = RunStatus.run_done

    @staticmethod
    async def _resume(run: Run) -> Completed | Paused | Terminated:
        """Answer the run's pause: go on, raising TerminationRequested in it if its
        termination was asked for meanwhile."""
        terminate, run.termination_requested = run.termination_requested, False
        return await _worker_of(run).resume(terminate)

    async def _analyze_loop(self) -> None:
        while True:
            run = self.runs.next_to_analyze()
            if run is None:
                await self.state_changed.wait()
                continue
            run.status = RunStatus.analyzing
            try:
                results = await _worker_of(run).analyze()
            except Exception as exc:  # OSError, ForkServerError...: never stranded
                await self.stage_failed(run, "analyze", exc)
                continue
            if isinstance(results, AnalysisOffloaded):
                # on the Dask cluster: the stage is free, the run ends when it returns
                self._spawn_offloaded(run, results)
                continue
            await self.scheduler.end_run(run, RunEnd("completed", results=results))

    def _spawn_offloaded(self, run: Run, sent: AnalysisOffloaded) -> None:
        task = self.scheduler.tasks.spawn(
            finish_offloaded(self, run, sent), "offloaded analyze",
            context=f"pipeline {self.name}, RID {run.rid}")
        self._offloaded.add(task)
        task.add_done_callback(self._offloaded.discard)

    async def stage_failed(self, run: Run, stage: str, exc: Exception) -> None:
        """Log a stage's failure and take the run out; a deleted run just goes. Any
        exception (a worker that could not even start: OSError, ForkServerError...)
        ends the run as failed, with the error in its history record."""
        if isinstance(exc, WorkerClosed) or run.deleting:
            return  # deletion ends the run itself
        if isinstance(exc, WorkerFailed):
            logger.error("RID %d: %s failed: %s", run.rid, stage, exc,
                         extra={"source": self.scheduler.source_of(run),
                                "traceback": exc.traceback})
            if exc.traceback:
                logger.error("RID %d: traceback of the experiment:\n%s", run.rid,
                             exc.traceback.rstrip(),
                             extra={"source": self.scheduler.source_of(run)})
            end = RunEnd("failed", error=str(exc), results=exc.results)
        elif isinstance(exc, WorkerError):
            logger.error("RID %d: %s failed: %s", run.rid, stage, exc)
            end = RunEnd("failed", error=str(exc))
        else:
            logger.error("RID %d: %s failed: %s: %s", run.rid, stage,
                         type(exc).__name__, exc, exc_info=exc)
            end = RunEnd("failed", error=f"{stage} failed: {type(exc).__name__}: {exc}")
        await self.scheduler.end_run(run, end, worker_lost=not isinstance(exc, WorkerFailed))
