"""Functions of the lab's functions module, called in workers: ``schedule.call_function``.

``FunctionCalls`` is what the scheduler's ``call_function``, ``task_status`` and
``task_result`` delegate to (``docs/functions.md``). ``call(pipeline, name, args,
kwargs, background)`` checks the call, gives it a task id (a uuid4 string) and starts
it; the function runs in a fresh worker of its own (``labpipe.worker.functions``) with
the lab's devices and datasets:

- a **foreground** call is a run of the pipeline: it takes a RID, waits in the queue
  like any submission (holds, priorities, the lock), shows in the ``schedule``
  notifier (its expid names the module's file, the function as ``class_name`` and the
  call under the ``function`` key), and ends in history. The schedule store keeps it
  across restarts (the task id travels in its expid);
- a **background** call starts at once, beside whatever the pipeline runs, takes no
  RID and is not in the schedule; at most ``max_background`` run at once.

A call is refused at once (one line) when no functions module is configured, the
module's file is found neither in the lab directory nor in the repository, or its
source (read, never imported by the master) defines no such public name. Everything
else the worker reports (import failing, wrong arguments, the function raising, a
value that is not PYON) ends the task unsuccessful with one line naming the function.

Tasks in flight are in memory; a finished task's record is written to the
``TaskStore`` (fsynced) before its status turns ``completed``, so a result reported as
final is on disk; the newest ``TaskStore.keep`` records stay (a task id of a foreground
call also names its run in history). The last finished records are cached in memory,
at most ``RECENT``.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from labpipe.config import ConfigError
from labpipe.master.access.caller import current_caller
from labpipe.master.precedence import RunStatus
from labpipe.master.run import Run, RunEnd
from labpipe.master.supervision import TaskSet
from labpipe.master.task_store import TaskStore, is_task_id
from labpipe.protocol import pyon
from labpipe.worker import messages
from labpipe.worker.functions import FUNCTION_KEY
from labpipe.worker.handle import Handlers, Worker, WorkerError

if TYPE_CHECKING:
    from labpipe.master.scheduler import Scheduler

__all__ = ["FunctionCalls", "TaskRecord", "RECENT", "defined_names"]

logger = logging.getLogger(__name__)

#: Finished records kept in memory (the rest are read from the store).
RECENT = 256
#: The largest functions module source the master reads to check a name.
MAX_SOURCE_BYTES = 4 << 20
#: Statuses of a foreground call's run that count as running.
_RUNNING = frozenset({RunStatus.running, RunStatus.paused, RunStatus.run_done,
                      RunStatus.analyzing})


@dataclass
class TaskRecord:
    """One function call, as ``task_result`` reports it."""

    task: str
    name: str
    pipeline: str
    background: bool
    args: list[Any]
    kwargs: dict[str, Any]
    rid: int | None = None
    user: str | None = None
    group: str | None = None
    status: str = "queued"  # queued, running, completed
    time_submitted: float = field(default_factory=time.time)
    time_start: float | None = None
    time_stop: float | None = None
    success: bool | None = None
    return_value: Any = None
    msg: str = ""
    traceback: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def take_outcome(self, outcome: messages.FunctionOutcome) -> None:
        """What the worker said about how the call ended (not final yet)."""
        if outcome.ok:
            try:
                self.return_value = pyon.decode(outcome.value)
                self.success, self.msg = True, ""
                return
            except ValueError as exc:
                self.success, self.msg = False, f"{self.name}: its value: {exc}"
                return
        self.success, self.msg = False, outcome.message
        self.traceback = outcome.traceback[-100_000:]


def defined_names(source: str) -> set[str] | None:
    """The names a module's top level defines (functions, assignments, imports,
    also inside top-level if/try/with blocks); None when it cannot tell (``import *``).
    SyntaxError when the source does not compile."""
    names: set[str] = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.partition(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for part in ("body", "orelse", "finalbody"):
                body.extend(getattr(node, part, []))
            for handler in getattr(node, "handlers", []):
                body.extend(handler.body)
    return names


def _strip_rid(message: str) -> str:
    """A worker error without its ``RID n: `` prefix."""
    return message.split(": ", 1)[1] if message.startswith("RID ") else message


class _Located:
    """Where the functions module was found: its file relative to ``workdir``."""

    def __init__(self, relpath: str, workdir: str, repo_rev: str | None,
                 repo_msg: str | None):
        self.relpath, self.workdir = relpath, workdir
        self.repo_rev, self.repo_msg = repo_rev, repo_msg


class FunctionCalls:
    """The function calls of one master; see the module docstring.

    ``module``: the functions module's name (None: not configured); ``store``: where
    finished records go (None: memory only); ``background_handlers(source)``: the
    master's services for a background call's worker (datasets, devices, logs under
    ``source``); ``check_queue_lock(what)``: refuses (PermissionError) a foreground
    call, which changes the queue, while the queue is locked and the call gave no key
    (the environment lock is the gate's, as for any ``call_function``)."""

    def __init__(self, scheduler: Scheduler, module: str | None, *,
                 store: TaskStore | None = None, max_background: int = 4,
                 background_handlers: Callable[[str], Handlers] | None = None,
                 check_queue_lock: Callable[[str], None] | None = None):
        if module is not None and not all(p.isidentifier() for p in module.split(".")):
            raise ConfigError(f"labpipe.toml: [functions] module: {module!r} is not a "
                              f"module name (such as lab_functions)")
        self.scheduler = scheduler
        self.module = module
        self.store = store
        self.max_background = max_background
        self.background_handlers = background_handlers or (lambda source: Handlers())
        self.check_queue_lock = check_queue_lock
        #: tasks in flight: queued or running
        self._live: dict[str, TaskRecord] = {}
        self._recent: collections.OrderedDict[str, TaskRecord] = collections.OrderedDict()
        self._background = TaskSet("functions", logger)
        self._stopping = False
        #: called with no argument whenever a task has finished (the queueserver's
        #: ``task_results_uid``)
        self.listeners: list[Callable[[], None]] = []

    # --- calls ---------------------------------------------------------------------

    async def call(self, pipeline: str, name: str, args: list[Any],
                   kwargs: dict[str, Any], background: bool) -> str:
        """Start a call; its task id. Refuses (ValueError, one line) what cannot run."""
        if self._stopping:
            raise RuntimeError("the master is shutting down")
        if self.module is None:
            raise ValueError("this lab has no functions module: name one in labpipe.toml "
                             "(functions = \"lab_functions\", docs/functions.md)")
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"{name!r} is not the name of a public function")
        if not background and self.check_queue_lock is not None:
            self.check_queue_lock("schedule.call_function")
        running = self.background_running()
        if background and running >= self.max_background:
            raise ValueError(f"{running} background functions run already (at most "
                             f"{self.max_background}: [functions] max_background)")
        where = await self._locate()
        try:
            await asyncio.to_thread(self._check_defined, where, name)
            caller = current_caller.get()
            task = TaskRecord(task=str(uuid.uuid4()), name=name, pipeline=pipeline,
                              background=background, args=list(args),
                              kwargs=dict(kwargs), user=caller.user, group=caller.group)
            expid = {"file": where.relpath, "class_name": name, "arguments": {},
                     "log_level": logging.WARNING,
                     FUNCTION_KEY: {"task": task.task, "module": self.module,
                                    "name": name, "args": task.args,
                                    "kwargs": task.kwargs}}
            if where.repo_rev is not None:
                expid["repo_rev"] = where.repo_rev
            if background:
                await self._start_background(task, expid, where)
            else:
                await self._queue(task, expid, where)
        except BaseException:
            self.scheduler.release_rev(where.repo_rev)
            raise
        return task.task

    async def _locate(self) -> _Located:
        """The module's file: next to device_db.py (the lab directory), else in the
        repository (at its current revision, checked out: the caller releases it)."""
        assert self.module is not None
        base = self.module.replace(".", "/")
        candidates = (base + ".py", base + "/__init__.py")
        lab_dir = self.scheduler.config.lab_dir
        for relpath in candidates:
            if os.path.isfile(os.path.join(lab_dir, relpath)):
                return _Located(relpath, lab_dir, None, None)
        repository = self.scheduler.repository
        rev = None
        if repository is not None:
            try:
                rev = await asyncio.to_thread(repository.resolve, None)
            except LookupError:  # a Git repository without a commit yet
                rev = None
        if repository is not None and rev is not None:
            for relpath in candidates:
                if await asyncio.to_thread(repository.exists, relpath, rev):
                    workdir, commit, message = await self.scheduler.checkout_rev(rev)
                    return _Located(relpath, workdir, commit, message)
        raise ValueError(f"the functions module {self.module!r} is not in the lab "
                         f"directory ({candidates[0]}) nor in the repository")

    def _check_defined(self, where: _Located, name: str) -> None:
        """Refuse a name the module's source does not define (blocks: a thread)."""
        path = os.path.join(where.workdir, where.relpath)
        try:
            with open(path, "rb") as f:
                source = f.read(MAX_SOURCE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"the functions module {self.module!r} cannot be read: "
                             f"{exc.strerror or exc}") from None
        if len(source) > MAX_SOURCE_BYTES:
            return  # too big to check here: the worker will say
        try:
            names = defined_names(source.decode("utf-8", errors="replace"))
        except (RecursionError, MemoryError):
            return  # too deep to check here: the worker will say
        except SyntaxError as exc:
            raise ValueError(f"cannot import the functions module {self.module!r}: "
                             f"SyntaxError: {exc.msg} ({where.relpath}, line "
                             f"{exc.lineno})") from None
        if names is not None and name not in names:
            public = sorted(n for n in names if not n.startswith("_"))
            shown = ", ".join(public[:20]) + (", ..." if len(public) > 20 else "")
            raise ValueError(f"the functions module {self.module!r} has no function "
                             f"{name!r} (it defines: {shown or 'nothing'})")

    async def _queue(self, task: TaskRecord, expid: dict[str, Any],
                     where: _Located) -> None:
        """A foreground call: a run of the pipeline, by ``Scheduler.enqueue`` as a
        submission's (its RID, queue position and record on disk first; the checks of
        a submission's expid are not for this one)."""
        def recorded(run: Run) -> None:
            task.rid = run.rid
            self._live[task.task] = task
        await self.scheduler.enqueue(
            task.pipeline, expid, workdir=where.workdir, repo_rev=where.repo_rev,
            repo_msg=where.repo_msg, user=task.user, group=task.group,
            on_recorded=recorded)
        logger.info("task %s: %s(...) queued in pipeline %s as RID %d", task.task,
                    task.name, task.pipeline, task.rid)

    # --- foreground: what the run's worker and end say --------------------------------

    def _task_of_run(self, run: Run) -> TaskRecord | None:
        """The task of a foreground call's run (made again for a restored run)."""
        spec = run.expid.get(FUNCTION_KEY)
        if not isinstance(spec, dict) or not is_task_id(spec.get("task")):
            return None
        task = self._live.get(spec["task"])
        if task is None:
            task = self._live[spec["task"]] = TaskRecord(
                task=spec["task"], name=str(spec.get("name")), pipeline=run.pipeline_name,
                background=False, args=list(spec.get("args") or []),
                kwargs=dict(spec.get("kwargs") or {}), rid=run.rid, user=run.user,
                group=run.group, time_submitted=run.submitted)
        return task

    def note_outcome(self, run: Run, outcome: messages.FunctionOutcome) -> None:
        """A run's worker told how its call ended (the run's handler of
        ``FunctionOutcome``)."""
        task = self._task_of_run(run)
        if task is None or task.task != outcome.task:
            logger.warning("RID %d: a function outcome for another task", run.rid)
            return
        task.take_outcome(outcome)

    def on_run_end(self, run: Run, end: RunEnd) -> Any:
        """A scheduler ``on_run_end`` listener: a foreground call's run ended; returns
        the writing of its record, which the scheduler awaits."""
        task = self._task_of_run(run)
        if task is None:
            return None
        if task.success is None and end.status == "interrupted":
            # a master killed after the task's record was written, before its run left
            # the schedule store: what was reported stays
            return self._finish_unless_recorded(task, run, end)
        return self._end(task, run, end)

    async def _finish_unless_recorded(self, task: TaskRecord, run: Run, end: RunEnd) -> None:
        stored = (None if self.store is None
                  else await asyncio.to_thread(self.store.read, task.task))
        if stored is not None and stored.get("status") == "completed":
            self._live.pop(task.task, None)
            return
        await self._end(task, run, end)

    def _end(self, task: TaskRecord, run: Run, end: RunEnd) -> Awaitable[None]:
        task.time_start = run.stage_times.get("running")
        if task.success is None or end.status != "completed":
            if task.success is None or task.success:
                task.success, task.return_value = False, None
                task.msg = (_strip_rid(end.error) if end.error
                            else f"{task.name}: the call was {end.status}")
        return self._finish(task)

    # --- background ------------------------------------------------------------------

    async def _start_background(self, task: TaskRecord, expid: dict[str, Any],
                                where: _Located) -> None:
        running = self.background_running()
        if running >= self.max_background:  # again: calls may have started meanwhile
            raise ValueError(f"{running} background functions run already (at most "
                             f"{self.max_background}: [functions] max_background)")
        task.status, task.time_start = "running", time.time()
        self._live[task.task] = task  # counted from now on
        try:
            if self.store is not None:  # a restarted master then knows it was cut short
                await asyncio.to_thread(self.store.write, task.as_dict())
        except BaseException:
            self._live.pop(task.task, None)
            raise
        self._background.spawn(self._run_background(task, expid, where),
                               f"function {task.name}", context=f"task {task.task}")
        logger.info("task %s: %s(...) runs in the background", task.task, task.name)

    async def _run_background(self, task: TaskRecord, expid: dict[str, Any],
                              where: _Located) -> None:
        scheduler = self.scheduler
        handlers = self.background_handlers(f"function({task.name})").merged(
            Handlers()
            .on(messages.FunctionOutcome, lambda m: task.take_outcome(m)
                if m.task == task.task else None)
            .on(messages.CheckPause, lambda m: False)
            .on(messages.CheckTermination, lambda m: False)
            .on(messages.GetStatus, lambda m: scheduler.get_status()))
        worker = Worker(0, handlers, launcher=scheduler.launcher,
                        term_timeout=scheduler.config.term_timeout,
                        kill_timeout=scheduler.config.kill_timeout)
        try:
            await worker.build(pipeline_name=task.pipeline, priority=0, expid=expid,
                               workdir=where.workdir, lab_dir=scheduler.config.lab_dir,
                               results_dir=scheduler.config.results_dir,
                               repo_rev=where.repo_rev,
                               timeout=scheduler.config.build_timeout)
            outcome = await worker.run()
            if task.success is None:
                task.success = False
                task.msg = f"{task.name}: the call ended {messages.tag_of(outcome)}"
        except Exception as exc:  # WorkerError; OSError, ForkServerError: no worker
            if task.success is None or task.success:
                task.success, task.return_value = False, None
                task.msg = (_strip_rid(str(exc)) if isinstance(exc, WorkerError) else
                            f"{task.name}: no worker could run it: "
                            f"{type(exc).__name__}: {exc}")
        finally:
            await worker.close()
            scheduler.release_rev(where.repo_rev)
        await self._finish(task)

    # --- results -----------------------------------------------------------------------

    async def _finish(self, task: TaskRecord) -> None:
        """Record a finished task on disk, then report it completed."""
        task.status, task.time_stop = "completed", time.time()
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.write, task.as_dict())
            except Exception:
                logger.exception("task %s: its record could not be written", task.task)
        self._live.pop(task.task, None)
        self._recent[task.task] = task
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        if task.success:
            logger.info("task %s: %s(...) returned", task.task, task.name)
        else:
            logger.warning("task %s: %s", task.task, task.msg)
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                logger.exception("task %s: a listener failed", task.task)

    async def _record(self, task: str) -> TaskRecord | dict[str, Any] | None:
        if task in self._live:
            return self._live[task]
        if task in self._recent:
            return self._recent[task]
        for pipeline in list(self.scheduler.pipelines.values()):
            for run in pipeline.runs.values():  # restored, not seen since
                spec = run.expid.get(FUNCTION_KEY)
                if isinstance(spec, dict) and spec.get("task") == task:
                    return self._task_of_run(run)
        if self.store is not None and is_task_id(task):
            return await asyncio.to_thread(self.store.read, task)
        return None

    def _status_of(self, record: TaskRecord | dict[str, Any]) -> str:
        if isinstance(record, dict):
            return str(record.get("status", "completed"))
        if record.status == "queued" and record.rid is not None:
            run = self.scheduler.find_or_none(record.rid)
            if run is not None and run.status in _RUNNING:
                return "running"
        return record.status

    async def status(self, task: str) -> str:
        """``queued``, ``running``, ``completed`` or ``not_found``."""
        record = await self._record(task)
        return "not_found" if record is None else self._status_of(record)

    async def result(self, task: str) -> dict[str, Any]:
        """The task's record (``docs/functions.md``): ``status``, and once completed
        ``success``, ``return_value``, ``msg``, ``traceback``... ``{"task", "status":
        "not_found"}`` for a task this master does not know (or no longer keeps)."""
        record = await self._record(task)
        if record is None:
            return {"task": task, "status": "not_found"}
        shown = dict(record) if isinstance(record, dict) else record.as_dict()
        shown["status"] = self._status_of(record)
        if shown["status"] == "running" and shown.get("time_start") is None:
            run = self.scheduler.find_or_none(shown["rid"])  # a foreground call's run
            shown["time_start"] = None if run is None else run.stage_times.get("running")
        if shown["status"] != "completed":
            for key in ("success", "return_value", "msg", "traceback", "time_stop"):
                shown[key] = None if key != "msg" else ""
        return shown

    def background_running(self) -> int:
        """How many background calls run now."""
        return sum(1 for t in self._live.values() if t.background)

    async def stop(self) -> None:
        """Stop the background calls (their workers closed); refuse new calls."""
        self._stopping = True
        await self._background.cancel()
