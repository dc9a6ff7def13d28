"""The scheduler: the ``schedule`` RPC target, its notifier, and the pipelines.

``submit`` validates the request, takes a RID (persisted before it is returned), records
the run in the ``schedule`` notifier and hands it to its pipeline, created on first use
and removed when it runs empty. Pipelines run in parallel; inside one, ``pipeline.py``
moves runs through the stages and ``precedence.py`` decides the order.

Runs leave through ``end_run``: the worker is closed (escalating), the repository
checkout released, the entry removed, and the end reported to ``on_run_end`` listeners
(history). When a worker died, the master writes the run's results file itself.

With a ``store`` (``schedule_store.ScheduleStore``) the schedule survives restarts: a
submission is on disk before ``submit`` returns its RID, the stages a run reaches are
noted, and the record goes when the run ends (after the ``on_run_end`` listeners, which
may be coroutines: history is written first; the removal rides on the store's next
write, ``remove_soon``, and ``restore()`` drops a record whose run history has). ``restore()`` puts the stored pending runs
back with their RIDs; a run that was past pending ends as ``interrupted``. The store's
commit also makes the RID durable (it keeps the highest RID submitted, and ``restore()``
reserves RIDs up to it), so ``last_rid.pyon`` is then written without fsync: one sync
per submission.
"""

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from labpipe.master import precedence
from labpipe.master.access.caller import Caller, current_caller
from labpipe.master.dry_run import validate_run
from labpipe.master.expid import EXPID_KEYS, validate_submission
from labpipe.master.functions import FunctionCalls
from labpipe.master.instructions import instruction_expid
from labpipe.master.pipeline import Pipeline
from labpipe.master.precedence import RunStatus
from labpipe.master.progress import ProgressTracker
from labpipe.master.queue_control import PUBLISHED_ONLY, QueueControl
from labpipe.master.queue_order import BACK, Place, QueueOrder, check_place
from labpipe.master.rid import RIDCounter
from labpipe.master.run import Run, RunEnd, bounded_error
from labpipe.master.schedule_store import NOT_STARTED_STAGES, ScheduleStore
from labpipe.master.supervision import TaskSet
from labpipe.protocol.sync import Mod, Notifier
from labpipe.worker import messages
from labpipe.worker.handle import Handlers, Worker
from labpipe.worker.launcher import Launcher

__all__ = ["Scheduler", "SchedulerConfig", "validate_submission", "EXPID_KEYS"]

logger = logging.getLogger(__name__)


class SchedulerConfig:
    """Where runs write and how long the scheduler waits for a worker."""

    def __init__(self, *, lab_dir: str = ".", results_dir: str = "results",
                 build_timeout: float | None = 60.0, term_timeout: float = 2.0,
                 kill_timeout: float = 2.0):
        self.lab_dir = os.path.abspath(lab_dir)
        self.results_dir = os.path.abspath(results_dir)
        self.build_timeout = build_timeout
        self.term_timeout = term_timeout
        self.kill_timeout = kill_timeout


class Scheduler:
    """The ``schedule`` target. ``worker_handlers(run)`` gives the ``Handlers`` of the
    master's services (datasets, devices, logs, ccb, interactive arguments) for a run's
    worker, ``worker_handlers(None)`` those a dry run may use (datasets, devices); a
    run's worker gets them merged with the scheduler's own (``run_handlers``); ``repository``
    gives checkouts (``request_rev(rev) -> (workdir, commit, message)``,
    ``release_rev(commit)``) or is None for files on the master's filesystem only;
    ``await check_submission(expid) -> expid`` refuses an expid whose file
    or class is missing, and resolves its revision to a commit id. ``launcher`` starts
    the runs' worker processes.

    Besides the RPC methods and what the stages call, the master's other parts
    (``queue_control``, ``dry_run``, the assembly) use: ``find``/``find_or_none``,
    ``move_run``, ``checkout_rev``/``release_rev``, ``tasks`` (the scheduler's
    supervised tasks: stage loops and background work) and ``stop``."""

    def __init__(self, rid_counter: RIDCounter, config: SchedulerConfig | None = None, *,
                 launcher: Launcher,
                 worker_handlers: Callable[[Run | None], Handlers] | None = None,
                 repository: Any = None,
                 check_submission: Callable[..., Awaitable[dict]] | None = None,
                 store: ScheduleStore | None = None):
        self.rid_counter = rid_counter
        self.launcher = launcher
        self.config = config or SchedulerConfig()
        self.worker_handlers = worker_handlers or (lambda run: Handlers())
        self.repository = repository
        self.check_submission = check_submission
        #: The ``explist`` notifier, for submit_plan (set by the master's assembly).
        self.explist: Notifier | None = None
        self.store = store
        self.notifier = Notifier({})
        self.pipelines: dict[str, Pipeline] = {}
        self.on_run_end: list[Callable[[Run, RunEnd], object]] = []
        #: RIDs out of the schedule whose end the listeners are still being told
        self.ending: set[int] = set()
        #: Stage loops and background work (ends of runs, stage notes, workers
        #: closing): a failure is logged with the RID and survived; ``stop`` ends them.
        self.tasks = TaskSet("scheduler", logger)
        self._stopping = False
        # queue control (labpipe's additions): pipeline states kept with the schedule
        self.queue = QueueControl(self, state_path=os.path.join(
            self.config.lab_dir, "pipelines.pyon") if store is not None else None)
        self.order = QueueOrder(self)
        self.progress = ProgressTracker()
        #: ``check_access(expid, what)``: refuses (PermissionError) a submission the
        #: caller's group may not run (``access.permissions``; set by the assembly).
        self.check_access: Callable[[dict, str], None] | None = None
        #: ``await ended_in_history(rid)``: whether a run's end is recorded (history;
        #: set by the assembly): ``restore`` then drops its stored record.
        self.ended_in_history: Callable[[int], Awaitable[bool]] | None = None
        self.on_run_end.append(self.progress.note_run_end)
        if store is not None:
            self.notifier.add_listener(self._note_stage)

    # --- RPC: the ARTIQ schedule target --------------------------------------------

    async def submit(self, pipeline_name: Any, expid: Any, priority: Any = 0,
                     due_date: Any = None, flush: Any = False, *, before: Any = None,
                     after: Any = None, pos: Any = None) -> int:
        """Submit a run; returns its RID once the RID is on disk. The arguments may
        come unchecked (a worker, history's resubmit): ``validate_submission`` checks
        them first. labpipe's keyword arguments ``before=RID``, ``after=RID`` or
        ``pos="front"|"back"|index`` place it in its pipeline's queue (``queue_order``;
        the back by default)."""
        return await self._submit(pipeline_name, expid, priority, due_date, flush,
                                  check_place(before, after, pos))

    async def _submit(self, pipeline_name: Any, expid: Any, priority: Any, due_date: Any,
                      flush: Any, place: Place, immediate: bool = False) -> int:
        if self._stopping:
            raise RuntimeError("the master is shutting down")
        validate_submission(pipeline_name, expid, priority, due_date, flush)
        expid = dict(expid)
        caller = current_caller.get()
        if self.check_access is not None:
            self.check_access(expid, "schedule.submit")
        if self.check_submission is not None:
            expid = await self.check_submission(expid)
        # a plain file is relative to the lab directory; a repository file to its checkout
        workdir, repo_rev, repo_msg = self.config.lab_dir, None, None
        if "repo_rev" in expid:
            workdir, repo_rev, repo_msg = await self.checkout_rev(expid["repo_rev"])
            expid["repo_rev"] = repo_rev
        try:
            position = (None if place == BACK
                        else await self.order.for_submission(pipeline_name, place))
            run = await self.enqueue(
                pipeline_name, expid, priority=priority,
                due_date=None if due_date is None else float(due_date), flush=flush,
                workdir=workdir, repo_rev=repo_rev, repo_msg=repo_msg, user=caller.user,
                group=caller.group, immediate=immediate, position=position)
        except BaseException:
            self.release_rev(repo_rev)
            raise
        return run.rid

    async def enqueue(self, pipeline_name: str, expid: dict[str, Any], *, workdir: str,
                      repo_rev: str | None = None, repo_msg: str | None = None,
                      user: str | None = None, group: str | None = None, priority: int = 0,
                      due_date: float | None = None, flush: bool = False,
                      immediate: bool = False, position: float | None = None,
                      on_recorded: Callable[[Run], None] | None = None) -> Run:
        """The last steps of a submission whose expid was checked: take a RID, commit
        the run's record (which makes the RID durable: one sync), put it into its
        pipeline. ``position``: its queue position (None: the back);
        ``on_recorded(run)`` is called once it is on disk, before it joins its
        pipeline (``functions``: the task learns its RID)."""
        rid = await self.rid_counter.next(durable=self.store is None)
        run = Run(rid=rid, pipeline_name=pipeline_name, expid=expid, priority=priority,
                  due_date=due_date, flush=flush, schedule=self.notifier,
                  state_changed=None, repo_msg=repo_msg, workdir=workdir,
                  repo_rev=repo_rev, user=user, group=group, immediate=immediate,
                  queue_position=(self.order.back(1, rid)[0] if position is None
                                  else position))
        if self.store is not None:
            await self.store.record_submission(run)
        if on_recorded is not None:
            on_recorded(run)
        self._add_run(run)
        return run

    async def delete(self, rid: int) -> None:
        """Delete a run in any stage: its worker is stopped (ask, SIGTERM, SIGKILL).
        A RID not (or no longer) in the schedule is ignored, as ARTIQ does. Returns once
        the deletion is on disk (a restarted master ends the run as ``deleted``)."""
        run = self.find_or_none(rid)
        if run is not None:
            await self.delete_runs([run])

    async def delete_runs(self, runs: list[Run]) -> None:
        """Delete runs of the schedule (``delete``, ``clear``): their deletions are
        noted on disk in one transaction, then each run leaves as ``deleted``."""
        runs = [run for run in runs if not run.deleting]
        if not runs:
            return
        if self.store is not None:
            with contextlib.ExitStack() as editing:
                for run in runs:
                    if run.deletion_asked is None:
                        run.deletion_asked = time.time()
                    editing.enter_context(run.editing())  # the prepare stage waits
                await self.store.write_records(runs)
        for run in runs:
            if self.find_or_none(run.rid) is not run or run.deleting:
                continue  # ended (or deleted) while the note was written
            run.status = RunStatus.deleting
            self._spawn(self.end_run(run, RunEnd("deleted")), run)

    async def request_termination(self, rid: int) -> None:
        """Ask a running (or paused) run to stop at its next pause()/check_termination();
        a run in any other stage is deleted. A RID not (or no longer) in the schedule
        is ignored, as ARTIQ does."""
        run = self.find_or_none(rid)
        if run is None:
            return
        if run.status in (RunStatus.running, RunStatus.paused):
            run.termination_requested = True
            run.pause_requested = False
            self.pipelines[run.pipeline_name].state_changed.notify()
        else:
            await self.delete(rid)

    def get_status(self) -> dict:
        """The schedule: the ``schedule`` notifier's content."""
        return self.notifier.raw_view

    def check_pause(self, rid: int) -> bool:
        """Whether pause() in run rid would not return at once."""
        run = self.find(rid)
        if run.status != RunStatus.running:
            return False
        return run.termination_requested or self.must_yield(run)

    def must_yield(self, run: Run) -> bool:
        """Whether the running run's pause() should yield: a prepared run of its
        pipeline outranks it and could start now (one that could not, in a held
        pipeline or waiting for devices in use elsewhere, is no reason to yield)."""
        if run.pause_requested:  # asked by a client (request_pause): until resumed
            return True
        prepared = self.pipelines[run.pipeline_name].runs.in_status(RunStatus.prepare_done)
        return precedence.should_yield(run, [r for r in prepared if not r.immediate
                                             and not self.queue.must_wait(r)])

    def request_pause(self, rid: int) -> None:
        """Ask the running run rid to pause at its next ``pause()`` check (a bluesky
        plan: its next checkpoint) and to stay paused until ``resume(rid)``."""
        run = self.find(rid)
        if run.status not in (RunStatus.running, RunStatus.paused):
            raise ValueError(f"RID {rid} is {run.status.value}: only a running run "
                             f"can be paused")
        run.pause_requested = True

    def resume(self, rid: int) -> None:
        """Let a run paused by ``request_pause`` go on."""
        run = self.find(rid)
        run.pause_requested = False
        self.pipelines[run.pipeline_name].state_changed.notify()

    def check_termination(self, rid: int) -> bool:
        """Whether termination of run rid was requested."""
        return self.find(rid).termination_requested

    async def submit_instruction(self, pipeline_name: str, name: str, *,
                                 before: int | None = None, after: int | None = None,
                                 pos: str | int | None = None) -> int:
        """Queue the instruction ``name`` (``queue_stop``: hold the pipeline when the
        queue reaches it; ``instructions.py``), placed as ``submit`` places a run.
        Returns its RID once it is on disk."""
        place = check_place(before, after, pos)
        if self._stopping:
            raise RuntimeError("the master is shutting down")
        if not isinstance(pipeline_name, str) or not pipeline_name:
            raise ValueError("pipeline_name must be a non-empty string")
        expid = instruction_expid(name)
        caller = current_caller.get()
        position = await self.order.for_submission(pipeline_name, place)
        run = await self.enqueue(pipeline_name, expid, workdir=self.config.lab_dir,
                                 user=caller.user, group=caller.group, position=position)
        return run.rid

    async def submit_plan(self, pipeline_name: str, name: str, args: list | tuple = (),
                          kwargs: dict | None = None, priority: int = 0,
                          due_date: float | None = None, file: str | None = None, *,
                          before: int | None = None, after: int | None = None,
                          pos: str | int | None = None) -> int:
        """Submit the bluesky plan ``name`` of the experiment list, queueserver style:
        ``args``/``kwargs`` as for the plan, device names as strings; placed in the
        queue as ``submit`` places a run. Returns the RID."""
        if self.explist is None:
            raise ValueError("this master has no experiment list to take plans from")
        from labpipe.bluesky.plans import plan_expid
        expid = plan_expid(self.explist.raw_view, name, args, kwargs, file=file)
        return await self.submit(pipeline_name, expid, priority, due_date, before=before,
                                 after=after, pos=pos)

    # --- RPC: labpipe's queue control (queue_control.py, dry_run.py) ----------------

    async def change(self, rid: int, priority: int | None = None,
                     due_date: float | None = None, pipeline_name: str | None = None,
                     arguments: dict | None = None, flush: bool | None = None) -> None:
        """Edit a pending run: None leaves a field as it is, due_date=0 removes the due
        date, arguments are merged into the expid's. Refused (ValueError) once the run
        is no longer pending. Returns once the change is on disk; a refused or failed
        change changes nothing."""
        await self.queue.change(rid, priority, due_date, pipeline_name, arguments, flush)

    async def hold(self, pipeline_name: str, after_current: bool = False) -> None:
        """Hold a pipeline (any name): it prepares and starts no new run until
        released; running runs finish. ``after_current``: shown as ``stop_pending``
        until the running run is done (the queueserver's queue_stop)."""
        await self.queue.hold(pipeline_name, after_current)

    async def release(self, pipeline_name: str) -> None:
        """Release a held pipeline (or cancel its pending hold)."""
        await self.queue.release(pipeline_name)

    async def set_stop_on_failure(self, pipeline_name: str, enabled: bool) -> None:
        """Hold the pipeline whenever one of its runs fails (off by default)."""
        await self.queue.set_stop_on_failure(pipeline_name, enabled)

    async def move(self, rid: int, before: int | None = None, after: int | None = None,
                   pos: str | int | None = None) -> None:
        """Move a pending run: right before or after another run of its pipeline, or
        to ``pos`` "front", "back" or an index of the pipeline's queue. Priority and due
        date still go first; the position replaces the RID as the last tie-breaker. On
        disk before it returns."""
        await self.order.move(rid, before, after, pos)

    async def move_batch(self, rids: list[int], before: int | None = None,
                         after: int | None = None, pos: str | int | None = None) -> None:
        """Move pending runs of one pipeline as a block, in the order given (see move)."""
        await self.order.move_batch(rids, before, after, pos)

    async def clear(self, pipeline_name: str) -> list[int]:
        """Delete every run of the pipeline that has not started running; returns
        their RIDs once the deletions are on disk."""
        return await self.order.clear(pipeline_name)

    async def execute_now(self, pipeline_name: str, expid: dict, wait: bool = False) -> int:
        """Run one experiment ahead of every other run of the pipeline, held or not;
        it is no queue item (it cannot be moved or changed) and goes to history.
        Refused while a run of the pipeline is running (or paused), unless wait: then it
        starts when that run is done (it does not make it pause). Returns its RID."""
        if not isinstance(wait, bool):
            raise TypeError("wait must be a boolean")
        pipeline = self.pipelines.get(pipeline_name) if isinstance(pipeline_name, str) \
            else None
        busy = [] if pipeline is None else pipeline.runs.in_status(RunStatus.running,
                                                                   RunStatus.paused)
        if busy and not wait:
            raise ValueError(f"pipeline {pipeline_name} is busy: RID {busy[0].rid} is "
                             f"{busy[0].status.value} (wait=True runs it once that is "
                             f"done)")
        return await self._submit(pipeline_name, expid, 0, None, False, BACK,
                                  immediate=True)

    async def set_device_check(self, pipeline_name: str, enabled: bool) -> None:
        """Turn the check for devices used by other pipelines' runs on or off for a
        pipeline (on by default)."""
        await self.queue.set_device_check(pipeline_name, enabled)

    async def validate(self, pipeline_name: str, expid: dict) -> list[str]:
        """A dry run: the problems that would stop this submission (file, class,
        arguments, devices), empty when it would start. Takes no RID."""
        return await validate_run(self, pipeline_name, expid)

    #: labpipe's function calls (``functions.py``; set by the master's assembly)
    functions: FunctionCalls | None = None

    def _functions(self) -> FunctionCalls:
        if self.functions is None:
            raise ValueError("this master runs no functions")
        return self.functions

    async def call_function(self, pipeline_name: str, name: str, args: list | tuple = (),
                            kwargs: dict | None = None,
                            run_in_background: bool = False) -> str:
        """Call the function ``name`` of the lab's functions module with args and
        kwargs in a fresh worker of the pipeline: a run of its queue, or with
        run_in_background at once, beside its run. Returns the task id; the value
        comes from ``task_result`` (``docs/functions.md``)."""
        return await self._functions().call(pipeline_name, name, list(args),
                                            dict(kwargs or {}), run_in_background)

    async def task_status(self, task: str) -> str:
        """A function call's status: queued, running, completed or not_found."""
        return await self._functions().status(task)

    async def task_result(self, task: str) -> dict:
        """A function call's record: status, success, return_value, msg (one line
        when it failed), rid (a foreground call's run)... (``docs/functions.md``)."""
        return await self._functions().result(task)

    # --- internals used by the pipelines -------------------------------------------

    def find(self, rid: int) -> Run:
        """The run of RID rid in the schedule; KeyError saying so when it is not."""
        for pipeline in self.pipelines.values():
            if rid in pipeline.runs:
                return pipeline.runs[rid]
        raise KeyError(f"RID {rid} is not in the schedule")

    def _add_run(self, run: Run) -> None:
        pipeline = self.pipelines.get(run.pipeline_name)
        if pipeline is None:
            pipeline = self.pipelines[run.pipeline_name] = Pipeline(run.pipeline_name, self)
            pipeline.start()
        run.state_changed = pipeline.state_changed
        pipeline.runs.add(run)
        run.publish()
        pipeline.state_changed.notify()

    def move_run(self, run: Run, pipeline_name: str) -> None:
        """Move a pending run to another pipeline (``queue_control.change``): its entry
        is published afresh with the new pipeline, and a pipeline left empty goes."""
        old = self.pipelines[run.pipeline_name]
        old.runs.remove(run)
        old.state_changed.notify()
        run.pipeline_name = pipeline_name
        self._add_run(run)
        run.set_field("pipeline", pipeline_name)  # noted by the schedule store
        self._drop_if_empty(old)

    def _drop_if_empty(self, pipeline: Pipeline) -> None:
        if not pipeline.runs and self.pipelines.get(pipeline.name) is pipeline:
            del self.pipelines[pipeline.name]
            self._spawn(pipeline.stop())

    def source_of(self, run: Run) -> str:
        """The log source name of a run's worker, as ARTIQ spells it."""
        return f"worker({run.rid},{run.class_name or run.expid.get('class_name') or ''})"

    def run_handlers(self, run: Run) -> Handlers:
        """What a run's worker asks of the scheduler: its ``scheduler`` device's calls
        and progress reports."""
        return (Handlers()
                .on(messages.CheckPause, lambda m: self.check_pause(m.rid))
                .on(messages.CheckTermination, lambda m: self.check_termination(m.rid))
                .on(messages.Submit, lambda m: self._submit_from_run(run, m))
                .on(messages.Delete, lambda m: self.delete(m.rid))
                .on(messages.RequestTermination, lambda m: self.request_termination(m.rid))
                .on(messages.GetStatus, lambda m: self.get_status())
                .on(messages.SetProgress, lambda m: self.progress.report(run, {
                    "done": m.done, "total": m.total, "message": m.message,
                    "time": m.time})))

    async def _submit_from_run(self, run: Run, m: messages.Submit) -> int:
        """A run's own submission, made as the run's user and group."""
        current_caller.set(Caller.of_run(run.user, run.group))
        return await self.submit(m.pipeline_name, m.expid, m.priority, m.due_date, m.flush)

    async def build_run(self, run: Run) -> None:
        """Start the run's worker and build the experiment in it."""
        handlers = self.worker_handlers(run).merged(self.run_handlers(run))
        run.worker = Worker(run.rid, handlers, launcher=self.launcher,
                            term_timeout=self.config.term_timeout,
                            kill_timeout=self.config.kill_timeout)
        outcome = await run.worker.build(
            pipeline_name=run.pipeline_name, priority=run.priority, expid=run.expid,
            workdir=run.workdir, lab_dir=self.config.lab_dir,
            results_dir=self.config.results_dir,
            repo_rev=run.repo_rev, timeout=self.config.build_timeout)
        run.class_name = outcome.class_name
        run.devices = outcome.devices

    def note_preparing(self, run: Run) -> asyncio.Task:
        """The prepare stage takes run: commit it, then publish ``preparing`` (in a
        task, returned, that the stage awaits before the run may start). From now on
        the run cannot be changed."""
        run.starting_at = time.time()
        return self._spawn(self._note_preparing(run), run)

    async def _note_preparing(self, run: Run) -> None:
        if self.store is not None:
            try:
                await self.store.write_record(run)
            except Exception:
                # the run still goes; a restart may then put it back as pending
                logger.exception("RID %d: could not note its start on disk", run.rid)
        if (run.status in (RunStatus.pending, RunStatus.flushing)
                and self.find_or_none(run.rid) is run):
            run.status = RunStatus.preparing

    def may_start_run(self, run: Run) -> bool:
        """Whether the run stage may start (or resume) run now: not in a held
        pipeline, not while another pipeline's run uses its devices."""
        return self.queue.may_start_run(run)

    def may_prepare(self, run: Run) -> bool:
        """Whether the prepare stage may take run now (not in a held pipeline, not
        while a change or deletion of it is being written)."""
        return not run.edits and self.queue.may_prepare(run)

    async def end_run(self, run: Run, end: RunEnd, worker_lost: bool = False) -> None:
        """Take a run out of the schedule: close its worker, release its checkout,
        remove its entry, tell the listeners."""
        pipeline = self.pipelines.get(run.pipeline_name)
        if pipeline is None or pipeline.runs.get(run.rid) is not run:
            return
        if run.worker is not None:
            if end.status == "deleted" or worker_lost:
                try:
                    await run.worker.close()  # the run shows "deleting" until it is gone
                except Exception:
                    logger.exception("RID %d: closing the worker failed", run.rid)
            else:
                # the worker is done: let it exit while the pipeline moves on
                self._spawn(run.worker.close(), run)
        if worker_lost and run.worker is not None and end.results is None:
            end.results = await self._write_results_for_lost_worker(run, end)
        if pipeline.runs.get(run.rid) is not run:
            return  # ended by someone else while the worker closed
        # the full text is in the results file; history and subscribers get a bound
        end.error = bounded_error(end.error, end.results)
        if end.status == "failed":  # before anything else may start
            await self.queue.note_failure(run.pipeline_name, run.rid)
            if pipeline.runs.get(run.rid) is not run:
                return
        pipeline.runs.remove(run)
        del self.notifier[run.rid]
        self.release_rev(run.repo_rev)
        pipeline.state_changed.notify()
        # what listeners return to await (history on disk), then the store, go on in
        # their own tracked task: in order, even if the stage loop that ends the run is
        # cancelled, and without holding that stage loop up (stop() awaits them)
        self._tell_run_end(run, end)
        self._drop_if_empty(pipeline)

    def _tell_run_end(self, run: Run, end: RunEnd) -> asyncio.Task:
        """Call the on_run_end listeners now; in a task, await what they returned (e.g.
        history on disk), then forget the run's stored record. Returns the task."""
        self.ending.add(run.rid)
        awaitables: list[Awaitable[object]] = []
        for listener in self.on_run_end:
            try:
                result = listener(run, end)
                if inspect.isawaitable(result):
                    awaitables.append(result)
            except Exception:
                logger.exception("RID %d: run-end listener failed", run.rid)
        return self._spawn(self._finish_run_end(run, awaitables), run)

    async def _finish_run_end(self, run: Run, awaitables: list[Awaitable[object]]) -> None:
        try:
            failed = False
            for awaitable in awaitables:
                try:
                    await awaitable
                except Exception:
                    failed = True
                    logger.exception("RID %d: run-end listener failed", run.rid)
            if failed and self.store is not None:
                # e.g. the history record could not be written: keep the stored run,
                # so that a restarted master reports its end (as interrupted)
                logger.error("RID %d: kept in the schedule store, its end was not "
                             "recorded everywhere", run.rid)
            elif self.store is not None:
                self.store.remove_soon(run.rid)  # its end is on disk in history
        finally:
            self.ending.discard(run.rid)

    def _note_stage(self, mod: Mod) -> None:
        """Schedule listener: a run changed stage (or priority...): note it on disk."""
        if (mod["action"] == "setitem" and len(mod["path"]) == 1
                and mod["key"] not in PUBLISHED_ONLY):
            run = self.find_or_none(mod["path"][0])
            if run is not None and self.store is not None:
                self._spawn(self.store.note_stage(run), run)

    def find_or_none(self, rid: int) -> Run | None:
        """The run of RID rid, or None when it is not in the schedule."""
        try:
            return self.find(rid)
        except KeyError:
            return None

    async def restore(self) -> list[int]:
        """Put back the runs of the store (at start, before any submission): pending
        ones with their RIDs, pipelines, priorities and due dates; the others end as
        ``interrupted`` (``deleted`` if they were being deleted). Returns the RIDs put
        back."""
        if self.store is None:
            return []
        # RIDs after every one submitted, even if last_rid.pyon lost its last writes
        self.rid_counter.reserve_up_to(self.store.last_rid)
        restored = []
        for record in await asyncio.to_thread(self.store.restore):
            rid = record["rid"]
            self.rid_counter.reserve_up_to(rid)
            if self.ended_in_history is not None and await self.ended_in_history(rid):
                # ended and recorded; only its schedule record outlived the master
                self.store.remove_soon(rid)
                continue
            run = Run(rid=rid, pipeline_name=record["pipeline"], expid=record["expid"],
                      priority=record["priority"], due_date=record["due_date"],
                      flush=record["flush"], schedule=self.notifier, state_changed=None,
                      workdir=self.config.lab_dir, repo_rev=record.get("repo_rev"),
                      submitted=record["submitted"], user=record.get("user"),
                      group=record.get("group"),
                      stage_times=dict(record.get("stage_times") or {}),
                      queue_position=float(record.get("queue_position", rid)),
                      immediate=bool(record.get("immediate", False)))
            self.order.restored(run)
            started = set(run.stage_times) - NOT_STARTED_STAGES
            if "deleting" in started:
                await self._tell_run_end(run, RunEnd("deleted"))
                continue
            if run.immediate and not started:
                # asked for at once, not for whenever a master runs again
                await self._tell_run_end(run, RunEnd(
                    "interrupted", error="the master stopped before this run of "
                                         "execute_now started"))
                continue
            if started:
                last = max(run.stage_times, key=lambda stage: run.stage_times[stage])
                logger.warning("RID %d was %s when the master stopped: interrupted",
                               rid, last)
                await self._tell_run_end(run, RunEnd(
                    "interrupted", error=f"the master stopped while the run was {last}"))
                continue
            if run.repo_rev is not None:
                try:
                    run.workdir, _, run.repo_msg = await self.checkout_rev(run.repo_rev)
                except Exception as e:
                    logger.error("RID %d: cannot check out %s again: %s", rid,
                                 run.repo_rev, e)
                    await self._tell_run_end(run, RunEnd(
                        "interrupted", error=f"cannot check out {run.repo_rev}: {e}"))
                    continue
            self._add_run(run)
            restored.append(rid)
        if restored:
            logger.info("restored %d pending run(s): RIDs %s", len(restored),
                        ", ".join(map(str, restored)))
        return restored

    async def _write_results_for_lost_worker(self, run: Run, end: RunEnd) -> str | None:
        """The worker died: write what the master knows about the run."""
        # imported here: h5py is 13 MiB of the master's memory (benchmarks/bench_rss.py)
        from labpipe.worker.results import results_path, write_results
        start = run.stage_times.get("preparing", run.submitted)
        path = results_path(self.config.results_dir, run.rid,
                            run.class_name or run.expid.get("class_name") or "Experiment",
                            start)
        try:
            await asyncio.to_thread(
                write_results, path, rid=run.rid, start_time=start,
                run_time=run.stage_times.get("running", start), expid=run.expid,
                repo_rev=run.repo_rev, error=end.error)
        except Exception:
            logger.exception("RID %d: could not write the results of the lost worker",
                             run.rid)
            return None
        return path

    # --- repository checkouts --------------------------------------------------------

    async def checkout_rev(self, rev: str) -> tuple[str, str, str]:
        if self.repository is None:
            raise ValueError("this master has no experiment repository")
        if getattr(self.repository, "instant", False):  # a plain folder: nothing to do
            workdir, commit, message = self.repository.request_rev(rev)
        else:
            workdir, commit, message = await asyncio.to_thread(self.repository.request_rev,
                                                               rev)
        return workdir, commit, message

    def release_rev(self, commit: str | None) -> None:
        if commit is not None and self.repository is not None:
            try:
                self.repository.release_rev(commit)
            except Exception:
                logger.exception("could not release the checkout of %s", commit)

    # --- lifetime ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], run: Run | None = None) -> asyncio.Task:
        """Run coro in a task of ``tasks`` (stop() waits for it); an exception it ends
        with is logged with the run's RID and its traceback, never silently dropped."""
        return self.tasks.spawn(coro, context=None if run is None else f"RID {run.rid}")

    async def stop(self) -> None:
        """Stop every pipeline, close every worker, and wait for the background work
        (ends of runs being written) to finish. Submissions are refused from now on."""
        self._stopping = True
        self.progress.close()
        pipelines = list(self.pipelines.values())
        for pipeline in pipelines:
            await pipeline.stop()
        workers = [run.worker for p in pipelines for run in p.runs.values()
                   if run.worker is not None]
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
        await self.tasks.wait()
        if self.store is not None:
            await self.store.flush_removals()
        await self.rid_counter.flush()
