"""Every call of the queueserver endpoint onto the labpipe master, in one place.

``Adapter(master, pipeline)`` reads the master's state (the schedule of one pipeline,
history, the experiment list, the device database) and calls its methods: submit a
plan, delete, change, hold/release, pause/resume/terminate, move, clear, execute now.
What needs methods a master may lack (functions: ``call_function``/``task_status``/
``task_result``) goes through ``optional(name)``, which raises ``NotAvailable`` ("... not available in this
labpipe master") when the scheduler has no such method.

Every call that changes the queue or the environment first passes the master's access
gate (``labpipe.master.access``) as the labpipe method it maps to, as a caller that said
no lock key, user or group: while the master is locked it is refused, as any other
client without the key, and with permissions on it has the default group's rights. The
endpoint is no way around the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labpipe.master.access.gate import Access
from labpipe.master.precedence import RunStatus, priority_key
from labpipe.master.run import Run

if TYPE_CHECKING:
    from labpipe.master.assembly import Master

__all__ = ["Adapter", "NotAvailable", "QUEUED", "RUNNING"]

#: Statuses of runs still in the queue (not started).
QUEUED = (RunStatus.pending, RunStatus.flushing, RunStatus.preparing,
          RunStatus.prepare_done)
#: Statuses of the running item.
RUNNING = (RunStatus.running, RunStatus.paused, RunStatus.run_done, RunStatus.analyzing)


class NotAvailable(RuntimeError):
    """The master lacks what a request needs; the message says which method."""


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

    def history_size(self) -> int:
        return sum(1 for r in self.master.history.notifier.raw_view.values()
                   if r.get("pipeline") == self.pipeline)

    def explist(self) -> dict[str, dict[str, Any]]:
        return dict(self.master.experiment_db.explist.raw_view)

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

    # --- changing -------------------------------------------------------------------

    async def submit_plan(self, name: str, args: list[Any], kwargs: dict[str, Any],
                          place: dict[str, Any] | None = None) -> int:
        """Queue a plan; place: ``before``/``after`` (RIDs) or ``pos``, or the back."""
        self._admit("schedule.submit_plan")
        return await self.master.scheduler.submit_plan(self.pipeline, name, args, kwargs,
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
        call_function = self.optional("call_function")
        self._admit("schedule.call_function")
        return await call_function(self.pipeline, name, args, kwargs, background)

    async def task_status(self, task: str) -> str:
        return await self.optional("task_status")(task)

    async def task_result(self, task: str) -> dict[str, Any]:
        return await self.optional("task_result")(task)

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
        self.master.gate.admit(label, Access())

    def optional(self, name: str) -> Callable[..., Any]:
        """A scheduler method of the queue-control issue, or NotAvailable."""
        method = getattr(self.master.scheduler, name, None)
        if method is None:
            raise NotAvailable(f"schedule.{name} is not available in this labpipe master")
        return method
