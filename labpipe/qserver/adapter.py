"""Every call of the queueserver endpoint onto the labpipe master, in one place.

``Adapter(master, pipeline)`` reads the master's state (the schedule of one pipeline,
history, the experiment list, the device database) and calls its methods: submit a
plan, delete, change, hold/release, pause/resume/terminate, move, clear, execute now,
call functions.

Every call that changes the queue or the environment first passes the master's access
gate (``labpipe.master.access``) as the labpipe method it maps to, with what the
request being served said (``request_access``: its ``lock_key``, ``user`` and
``user_group`` as labpipe's lock key, user and group): while the master is locked it is
refused without the key, as any other client, and with permissions on the group's rights
and rules apply. The endpoint is no way around the lock. The lock itself and the
permissions are the master's (``lock``, ``unlock``, ``lock_state``; ``permissions``,
``reload_permissions``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from labpipe.bluesky.runs import RUNS_KEY
from labpipe.config import CONFIG_FILE, ConfigError, load_config
from labpipe.master.access.gate import Access
from labpipe.master import queue_order
from labpipe.master.access.permissions import Permissions
from labpipe.master.precedence import RunStatus, priority_key
from labpipe.master.run import Run
from labpipe.qserver.items import is_instruction_record

if TYPE_CHECKING:
    from labpipe.master.assembly import Master

__all__ = ["Adapter", "QUEUED", "RUNNING", "request_access"]

#: Statuses of runs still in the queue (not started).
QUEUED = queue_order.QUEUED
#: Statuses of the running item.
RUNNING = (RunStatus.running, RunStatus.paused, RunStatus.run_done, RunStatus.analyzing)


#: What the request being served said about itself: its lock key, user and group.
request_access: ContextVar[Access] = ContextVar("qserver_request_access",
                                                default=Access())


class Adapter:
    """The queueserver's view of one pipeline of a master."""

    def __init__(self, master: Master, pipeline: str):
        self.master = master
        self.pipeline = pipeline

    # --- reading --------------------------------------------------------------------

    def _runs(self) -> list[Run]:
        p = self.master.scheduler.pipelines.get(self.pipeline)
        return [] if p is None else list(p.runs.values())

    def queued(self) -> list[Run]:
        """The runs of the queue, first to go first."""
        runs = [r for r in self._runs() if r.status in QUEUED and not r.immediate]
        return sorted(runs, key=priority_key, reverse=True)

    def queue_size(self) -> int:
        """How many runs the queue has (``len(queued())`` without sorting them)."""
        return sum(1 for r in self._runs() if r.status in QUEUED and not r.immediate)

    def running(self) -> Run | None:
        """The running (or paused, or finishing) run, if any."""
        runs = [r for r in self._runs() if r.status in RUNNING]
        return min(runs, key=lambda r: RUNNING.index(r.status), default=None)

    def find(self, rid: int) -> Run | None:
        return self.master.scheduler.find_or_none(rid)

    def held(self) -> bool:
        """Held, or to be held after the running run (both: autostart off)."""
        return self.master.scheduler.queue.states.is_held(self.pipeline)

    def stop_pending(self) -> bool:
        return self.master.scheduler.queue.states.state(self.pipeline)["stop_pending"]

    def stop_on_failure(self) -> bool:
        return self.master.scheduler.queue.states.state(self.pipeline)["stop_on_failure"]

    async def set_stop_on_failure(self, enabled: bool) -> None:
        self._admit("schedule.set_stop_on_failure")
        await self.master.scheduler.set_stop_on_failure(self.pipeline, enabled)

    async def history(self, limit: int) -> list[dict[str, Any]]:
        """This pipeline's history records, oldest first."""
        records = await self.master.history.list(limit)
        return [r for r in reversed(records) if r.get("pipeline") == self.pipeline]

    def history_size(self, after_rid: int = -1) -> int:
        """How many of this pipeline's history records have a RID above after_rid."""
        return sum(1 for rid, r in self.master.history.notifier.raw_view.items()
                   if rid > after_rid and r.get("pipeline") == self.pipeline
                   and not is_instruction_record(r))

    def explist(self) -> dict[str, dict[str, Any]]:
        return dict(self.master.experiment_db.explist.raw_view)

    def bluesky_runs(self, rid: int) -> list[dict[str, Any]]:
        """The bluesky runs of run rid as its worker reported them (``bluesky.runs``,
        ``labpipe.bluesky.runs``): ``[{"uid", "is_open", "exit_status"}]``."""
        entry = self.master.dataset_db.data.raw_view.get(RUNS_KEY)
        value = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else None
        if not isinstance(value, dict) or value.get("rid") != rid:
            return []
        return [dict(r) for r in value.get("runs", []) if isinstance(r, dict)]

    def lab_path(self, name: str) -> str:
        """The path of a file of the lab directory."""
        return os.path.join(self.master.options.lab_dir, name)

    def device_db(self) -> dict[str, Any]:
        return dict(self.master.device_db.get_device_db())

    def add_listener(self, on_change: Callable[[str], None]) -> None:
        """on_change("queue") on every change of the schedule, ("history") of history,
        ("plans") of the experiment list, ("devices") of the device database,
        ("tasks") when a function call finished."""
        self.master.scheduler.notifier.add_listener(lambda mod: on_change("queue"))
        self.master.history.notifier.add_listener(lambda mod: on_change("history"))
        self.master.experiment_db.explist.add_listener(lambda mod: on_change("plans"))
        self.master.device_db.data.add_listener(lambda mod: on_change("devices"))
        functions = getattr(self.master, "functions", None)
        if functions is not None:  # a function call finished
            functions.listeners.append(lambda: on_change("tasks"))
        self.master.lock.notifier.add_listener(lambda mod: on_change("lock"))

    # --- the lock and the permissions (the master's own) ------------------------------

    def lock_state(self) -> dict[str, Any]:
        """``{"locked", "scope", "note", "user", "time"}`` of the master's lock."""
        return self.master.lock.info()

    def emergency_key_set(self) -> bool:
        return self.master.lock.emergency_key_set

    def lock_opens(self, key: str) -> bool:
        """Whether key passes the lock (its key or the emergency key)."""
        return self.master.lock.opens(key)

    def check_lock(self, scope: str, what: str) -> None:
        """Refuse (LockRefused) what while scope is locked and the request's key does
        not open the lock."""
        self.master.lock.check(scope, what, request_access.get().lock_key)

    async def lock(self, key: str, scope: list[str], note: str | None,
                   user: str | None) -> None:
        self._admit("lock.lock")
        await self.master.lock.lock(key, scope, note, user)

    async def unlock(self, key: str) -> None:
        self._admit("lock.unlock")
        await self.master.lock.unlock(key)

    @property
    def permissions(self) -> Permissions:
        return self.master.permissions

    def reload_permissions(self) -> None:
        """Read ``[permissions]`` of the lab's labpipe.toml again (ConfigError when it
        is not valid: the permissions stay as they were). Without the file there is
        nothing to read: fine while permissions are off (the defaults), refused when
        they are on (they came from elsewhere, and stay)."""
        lab_dir = self.master.options.lab_dir
        if not os.path.exists(os.path.join(lab_dir, CONFIG_FILE)):
            if self.master.permissions.enabled:
                raise ConfigError(f"no {CONFIG_FILE} in the lab directory to read "
                                  "[permissions] from: the permissions stay as they are")
            return
        self.master.permissions.reload(load_config(lab_dir).permissions)

    # --- changing -------------------------------------------------------------------

    async def submit_plan(self, name: str, args: list[Any], kwargs: dict[str, Any],
                          place: dict[str, Any] | None = None) -> int:
        """Queue a plan; place: ``before``/``after`` (RIDs) or ``pos``, or the back."""
        self._admit("schedule.submit_plan")
        return await self.master.scheduler.submit_plan(self.pipeline, name, args, kwargs,
                                                       **(place or {}))

    async def submit_instruction(self, name: str,
                                 place: dict[str, Any] | None = None) -> int:
        """Queue an instruction (``schedule.submit_instruction``), placed as a plan."""
        self._admit("schedule.submit_instruction")
        return await self.master.scheduler.submit_instruction(self.pipeline, name,
                                                              **(place or {}))

    async def delete(self, rid: int) -> None:
        self._admit("schedule.delete")
        await self.master.scheduler.delete(rid)

    async def change_arguments(self, rid: int, name: str, args: list[Any],
                               kwargs: dict[str, Any]) -> None:
        from labpipe.bluesky.plans import plan_expid
        expid = plan_expid(self.explist(), name, args, kwargs)
        self._admit("schedule.change")
        await self.master.scheduler.change(rid, arguments=expid["arguments"])

    async def hold(self, after_current: bool = False) -> None:
        self._admit("schedule.hold")
        await self.master.scheduler.hold(self.pipeline, after_current)

    async def release(self) -> None:
        self._admit("schedule.release")
        await self.master.scheduler.release(self.pipeline)

    def pause(self, rid: int) -> None:
        self._admit("schedule.request_termination")
        self.master.scheduler.request_pause(rid)

    def resume(self, rid: int) -> None:
        self._admit("schedule.request_termination")
        self.master.scheduler.resume(rid)

    async def terminate(self, rid: int) -> None:
        self._admit("schedule.request_termination")
        await self.master.scheduler.request_termination(rid)

    async def move(self, rids: list[int], pos: Any = None, before: int | None = None,
                   after: int | None = None) -> None:
        """Move queued runs as a block (``schedule.move_batch``)."""
        self._admit("schedule.move_batch")
        await self.master.scheduler.move_batch(rids, before=before, after=after, pos=pos)

    async def clear(self) -> list[int]:
        self._admit("schedule.clear")
        return await self.master.scheduler.clear(self.pipeline)

    async def execute_plan(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> int:
        """Run a plan at once, ahead of the queue (``schedule.execute_now``)."""
        from labpipe.bluesky.plans import plan_expid
        self._admit("schedule.execute_now")
        expid = plan_expid(self.explist(), name, args, kwargs)
        return await self.master.scheduler.execute_now(self.pipeline, expid)

    async def call_function(self, name: str, args: list[Any], kwargs: dict[str, Any],
                            background: bool) -> str:
        """Call a function of the lab's functions module; its task id."""
        self._admit("schedule.call_function")
        return await self.master.scheduler.call_function(self.pipeline, name, args,
                                                         kwargs, background)

    async def task_status(self, task: str) -> str:
        return await self.master.scheduler.task_status(task)

    async def task_result(self, task: str) -> dict[str, Any]:
        return await self.master.scheduler.task_result(task)

    def background_tasks(self) -> int:
        """How many background function calls run now."""
        functions = getattr(self.master, "functions", None)
        return 0 if functions is None else functions.background_running()

    async def rescan(self) -> None:
        """Scan the repository and the device database again."""
        self._admit("experiment_db.scan_repository")
        self._admit("device_db.scan")
        await self.master.experiment_db.scan_repository()
        self.master.device_db.scan()

    def _admit(self, label: str) -> None:
        """Refuse (PermissionError, one line) what the lock or permissions refuse."""
        self.master.gate.admit(label, request_access.get())

