"""Queue control: editing pending runs, holding pipelines, device conflicts.

What the ``schedule`` target adds to ARTIQ's methods (new methods, new keys; the ARTIQ
shapes are unchanged):

- ``change(rid, priority=None, due_date=None, pipeline_name=None, arguments=None,
  flush=None)``: edits a *pending* run; None leaves a field as it is (``due_date=0``
  removes the due date). ``arguments`` are merged into the expid's arguments, and the
  result is checked as ``submit`` checks a submission (names, values, scans, devices
  against the examined descriptions of the run's file at its revision). The new order
  is whatever ``precedence`` decides from the new priority and due date. Every value is
  checked before anything changes; a run that is not pending (or not in the schedule)
  is refused with a ``ValueError`` (``KeyError``) saying so.
- ``hold(pipeline_name, after_current=False)`` / ``release(pipeline_name)``: a held
  pipeline prepares and starts no new run; a running run finishes, a paused one may
  resume, a run of ``execute_now`` goes anyway. Any name can be held, with or without
  runs. ``after_current`` while a run runs: ``stop_pending`` until its run stage is
  done (``settle``, called by the run stage), then held.
- ``set_stop_on_failure(pipeline_name, enabled)``: a failed run holds the pipeline.
- ``set_device_check(pipeline_name, enabled)``: see ``conflicts.py``; on by default.

Pipeline states are published in the ``pipelines`` notifier, ``{name: {"held": bool,
"device_check": bool, "stop_pending": bool, "stop_on_failure": bool}}`` (a name is
listed while any differs from the default: ``device_check`` True, the others False),
and kept across restarts in a PYON file
(written atomically before the RPC returns) when a path is given.

A run the run stage cannot start because of a device conflict shows why in its entry:
``blocked_by`` = ``[{"rid", "pipeline", "devices"}]`` (None once nothing blocks it).
Blocked pipelines are woken whenever a run of another pipeline changes status or leaves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from labpipe.master import conflicts
from labpipe.master.precedence import RunStatus
from labpipe.master.run import Run
from labpipe.protocol import pyon
from labpipe.protocol.sync import Mod, Notifier

if TYPE_CHECKING:  # the scheduler makes this module's QueueControl
    from labpipe.master.scheduler import Scheduler

__all__ = ["PipelineStates", "QueueControl", "check_change", "PUBLISHED_ONLY"]

logger = logging.getLogger(__name__)

_DEFAULT_STATE = {"held": False, "device_check": True, "stop_pending": False,
                  "stop_on_failure": False}

#: Entry keys that are only published, never stored with the schedule (they change
#: often and mean nothing after a restart).
PUBLISHED_ONLY = frozenset({"started", "progress", "eta", "blocked_by"})


class PipelineStates:
    """The ``pipelines`` notifier, and its file."""

    def __init__(self, path: str | None = None):
        self.path = path
        backing: dict[str, dict[str, bool]] = {}
        if path is not None and os.path.exists(path):
            try:
                stored = pyon.load_file(path)
                for name, state in dict(stored).items():
                    if isinstance(name, str) and isinstance(state, dict):
                        backing[name] = {key: bool(state.get(key, default))
                                         for key, default in _DEFAULT_STATE.items()}
            except Exception as e:
                logger.error("%s: cannot read the pipeline states (%s); starting with "
                             "none held", path, e)
        self.notifier = Notifier(backing)
        self._lock = asyncio.Lock()  # one change at a time: file, then notifier

    def state(self, name: str) -> dict[str, bool]:
        return self.notifier.raw_view.get(name, _DEFAULT_STATE)

    def is_held(self, name: str) -> bool:
        """Held, or to be held once its running run is done (both start nothing)."""
        state = self.state(name)
        return state["held"] or state["stop_pending"]

    def exempt(self) -> set[str]:
        """Pipelines whose device check is off."""
        return {n for n, s in self.notifier.raw_view.items() if not s["device_check"]}

    async def set(self, name: str, **values: bool) -> None:
        """Change settings of a pipeline: store the states (file fsynced and
        renamed), then publish the change; a failed write changes nothing."""
        if not isinstance(name, str) or not name:
            raise ValueError("pipeline_name must be a non-empty string")
        async with self._lock:
            current = dict(self.state(name))
            if all(current[key] == value for key, value in values.items()):
                return
            current.update(values)
            if self.path is not None:
                snapshot = {n: dict(s) for n, s in self.notifier.raw_view.items()}
                if current == _DEFAULT_STATE:
                    snapshot.pop(name, None)
                else:
                    snapshot[name] = current
                await asyncio.to_thread(pyon.store_file, self.path, snapshot)
            if current == _DEFAULT_STATE:
                del self.notifier[name]
            else:
                self.notifier[name] = current


def check_change(priority: object = None, due_date: object = None,
                 pipeline_name: object = None, arguments: object = None,
                 flush: object = None) -> dict[str, Any]:
    """The fields a ``change`` sets, checked; TypeError/ValueError naming the field."""
    changes: dict[str, Any] = {}
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError("priority must be an integer")
        changes["priority"] = priority
    if due_date is not None:
        if isinstance(due_date, bool) or not isinstance(due_date, numbers.Real):
            raise TypeError("due_date must be a UNIX time (a number); 0 removes it")
        due_date = float(due_date)
        if not math.isfinite(due_date):
            raise ValueError(f"due_date must be a finite UNIX time, not {due_date}")
        changes["due_date"] = due_date if due_date > 0 else None
    if pipeline_name is not None:
        if not isinstance(pipeline_name, str) or not pipeline_name:
            raise ValueError("pipeline_name must be a non-empty string")
        changes["pipeline_name"] = pipeline_name
    if arguments is not None:
        if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
            raise TypeError("arguments must be a dict with string keys")
        changes["arguments"] = arguments
    if flush is not None:
        if not isinstance(flush, bool):
            raise TypeError("flush must be a boolean")
        changes["flush"] = flush
    return changes


class QueueControl:
    """The queue-control part of the scheduler (``scheduler`` is a ``Scheduler``).

    ``resolve_device(key) -> key`` (optional) follows device aliases for the conflict
    check."""

    def __init__(self, scheduler: Scheduler, state_path: str | None = None,
                 resolve_device: Callable[[str], str] | None = None):
        self.scheduler = scheduler
        self.states = PipelineStates(state_path)
        self.resolve_device = resolve_device
        self._blocked: dict[int, list | None] = {}  # rid -> published blocked_by
        self.edit_lock = asyncio.Lock()  # edits of runs one at a time
        scheduler.notifier.add_listener(self._on_schedule_mod)

    # --- RPC ------------------------------------------------------------------------

    async def change(self, rid: int, priority: object = None, due_date: object = None,
                     pipeline_name: object = None, arguments: object = None,
                     flush: object = None) -> None:
        """Edit a pending run (see the module docstring): everything is checked, the
        new record committed to the schedule store, then the change applied and
        published. A call that fails changes nothing."""
        changes = check_change(priority, due_date, pipeline_name, arguments, flush)
        async with self.edit_lock:  # staged is per edit
            run = self.pending_run(rid)
            if not changes:
                return
            staged: dict[str, Any] = {k: changes[k] for k in ("priority", "due_date", "flush")
                                      if k in changes}
            if "arguments" in changes:
                expid = dict(run.expid)
                expid["arguments"] = {**(expid.get("arguments") or {}),
                                      **changes["arguments"]}
                try:
                    pyon.encode(expid)
                except (TypeError, ValueError, RecursionError) as e:
                    raise ValueError(f"RID {rid}: the new arguments cannot be stored: "
                                     f"{e}") from None
                if self.scheduler.check_access is not None:
                    self.scheduler.check_access(expid, "schedule.change")
                await self._check_arguments(run, expid)
                run = self.pending_run(rid)  # it may have been deleted meanwhile
                staged["expid"] = expid
            if "pipeline_name" in changes:
                staged["pipeline"] = changes["pipeline_name"]
            store = self.scheduler.store
            if store is not None:
                run.staged = staged
                try:
                    with run.editing():  # the prepare stage leaves it alone meanwhile
                        await store.write_record(run)
                finally:
                    run.staged = {}
                # a delete may have come while the record was written
                run = self.pending_run(rid)
            self._apply(run, staged)
        logger.info("RID %d changed: %s", rid,
                    ", ".join(f"{k}={v!r}" for k, v in changes.items()))

    async def _check_arguments(self, run: Run, expid: dict[str, Any]) -> None:
        """Check the run's new arguments as ``submit`` checks a submission (its file
        or content, class and arguments, at its revision); the prepare stage leaves the
        run alone meanwhile. ValueError naming the RID when they are refused."""
        check = self.scheduler.check_submission
        if check is None:
            return
        with run.editing():
            try:
                await check(expid)
            except (LookupError, ValueError, TypeError, OSError) as e:
                text = str(e).strip().splitlines()
                raise ValueError(f"RID {run.rid}: "
                                 f"{text[0] if text else type(e).__name__}") from None

    def pending_run(self, rid: object, verb: str = "changed") -> Run:
        """The pending run of RID rid (KeyError when it is not in the schedule,
        ValueError naming its status when it is no longer pending)."""
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise TypeError(f"a RID must be an integer, not {rid!r}")
        run = self.scheduler.find(rid)
        if run.immediate:
            raise ValueError(f"RID {rid} runs at once (execute_now): it cannot be {verb}")
        status = ("being prepared" if run.status == RunStatus.pending
                  and run.starting_at is not None else run.status.value)
        if status != RunStatus.pending.value:
            raise ValueError(f"RID {rid} is {status}: only pending runs can be "
                             f"{verb} (delete it and submit it again instead)")
        return run

    def _apply(self, run: Run, staged: dict[str, Any]) -> None:
        """Apply checked, stored changes; no await: the stages never see half of it."""
        if "expid" in staged:
            run.expid = staged["expid"]
            run.set_field("expid", staged["expid"])
        for key in ("priority", "due_date", "flush"):
            if key in staged:
                run.set_field(key, staged[key])
        new = staged.get("pipeline")
        if new is not None and new != run.pipeline_name:
            self.scheduler.move_run(run, new)

    async def hold(self, pipeline_name: str, after_current: bool = False) -> None:
        """Hold a pipeline: it prepares and starts no new run until released. With
        after_current, while a run of it is running (or paused) the pipeline shows
        ``stop_pending`` and is held once that run is done (the queueserver's
        queue_stop); release() before then cancels it."""
        if not isinstance(after_current, bool):
            raise TypeError("after_current must be a boolean")
        if after_current and self._busy(pipeline_name):
            await self.states.set(pipeline_name, stop_pending=True)
            logger.info("pipeline %s will be held after its current run", pipeline_name)
            return
        await self.states.set(pipeline_name, held=True, stop_pending=False)
        logger.info("pipeline %s held", pipeline_name)

    async def release(self, pipeline_name: str) -> None:
        """Release a held pipeline (or cancel its pending hold)."""
        await self.states.set(pipeline_name, held=False, stop_pending=False)
        logger.info("pipeline %s released", pipeline_name)
        self._wake(pipeline_name)

    async def set_stop_on_failure(self, pipeline_name: str, enabled: bool) -> None:
        """Hold the pipeline whenever one of its runs fails (off by default, as ARTIQ)."""
        if not isinstance(enabled, bool):
            raise TypeError("enabled must be a boolean")
        await self.states.set(pipeline_name, stop_on_failure=enabled)

    async def settle(self, pipeline_name: str) -> None:
        """The run stage of the pipeline went idle: a pending hold takes effect."""
        if (self.states.state(pipeline_name)["stop_pending"]
                and not self._busy(pipeline_name)):
            await self.states.set(pipeline_name, held=True, stop_pending=False)
            logger.info("pipeline %s held: its current run is done", pipeline_name)

    async def note_failure(self, pipeline_name: str, rid: int) -> None:
        """A run of the pipeline failed: hold it if its stop_on_failure is set."""
        if self.states.state(pipeline_name)["stop_on_failure"]:
            await self.states.set(pipeline_name, held=True, stop_pending=False)
            logger.warning("pipeline %s held: RID %d failed (stop_on_failure)",
                           pipeline_name, rid)

    def _busy(self, pipeline_name: str) -> bool:
        pipeline = self.scheduler.pipelines.get(pipeline_name)
        return pipeline is not None and bool(
            pipeline.runs.in_status(RunStatus.running, RunStatus.paused))

    async def set_device_check(self, pipeline_name: str, enabled: bool) -> None:
        """Turn the cross-pipeline device-conflict check of a pipeline on or off."""
        if not isinstance(enabled, bool):
            raise TypeError("enabled must be a boolean")
        await self.states.set(pipeline_name, device_check=enabled)
        self._wake_all()

    # --- decisions for the stages ---------------------------------------------------

    def may_prepare(self, run: Run) -> bool:
        """Whether the prepare stage may take run (not when its pipeline is held,
        unless it is a run of execute_now)."""
        return run.immediate or not self.states.is_held(run.pipeline_name)

    def may_start_run(self, run: Run) -> bool:
        """Whether the run stage may start (or resume) run now: its pipeline is not
        held (a paused run may resume), and no run of another pipeline uses its
        devices. Publishes ``blocked_by`` when that changes."""
        if run.pause_requested:
            return False  # paused by a client until resumed
        if self._held_for(run):
            return False
        found = self._conflicts(run)
        self._publish_blocked(run, conflicts.blocked_by(found))
        return not found

    def must_wait(self, run: Run) -> bool:
        """Whether the run stage could not start run now (``may_start_run`` without
        publishing anything): a running run need not yield to it."""
        return self._held_for(run) or bool(self._conflicts(run))

    def _held_for(self, run: Run) -> bool:
        """A held pipeline starts no run, but a paused one may resume and a run of
        execute_now goes anyway."""
        return (run.status != RunStatus.paused and not run.immediate
                and self.states.is_held(run.pipeline_name))

    def _conflicts(self, run: Run) -> list[conflicts.Conflict]:
        return conflicts.conflicts(
            run, self._all_runs(), resolve=self.resolve_device or (lambda k: k),
            exempt=self.states.exempt())

    def _all_runs(self) -> Iterator[Run]:
        for pipeline in list(self.scheduler.pipelines.values()):
            yield from pipeline.runs.values()

    def _publish_blocked(self, run: Run, value: list | None) -> None:
        previous = self._blocked.get(run.rid)
        if value == previous:
            return
        if value is None:
            self._blocked.pop(run.rid, None)
        else:
            self._blocked[run.rid] = value
            logger.info("RID %d waits for device(s) in use by RID(s) %s", run.rid,
                        ", ".join(str(b["rid"]) for b in value))
        run.set_field("blocked_by", value)

    # --- waking ---------------------------------------------------------------------

    def _on_schedule_mod(self, mod: Mod) -> None:
        """A run changed status or left: blocked runs elsewhere may start now."""
        if not self._blocked:
            return
        if mod["action"] == "delitem" and mod["path"] == []:
            self._blocked.pop(mod["key"], None)
            self._wake_all()
        elif mod["action"] == "setitem" and mod.get("key") == "status":
            self._wake_all()

    def _wake(self, pipeline_name: str) -> None:
        pipeline = self.scheduler.pipelines.get(pipeline_name)
        if pipeline is not None:
            pipeline.state_changed.notify()

    def _wake_all(self) -> None:
        for pipeline in list(self.scheduler.pipelines.values()):
            pipeline.state_changed.notify()
