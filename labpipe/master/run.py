"""One submitted run, as the master sees it.

A ``Run`` owns its schedule entry: setting ``run.status`` (or another published field,
``set_field``) updates the ``schedule`` notifier; a new status, priority, due date or
flush flag also wakes the pipeline's stages. Nothing else writes the entry.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labpipe.master.precedence import RunStatus
from labpipe.master.stage_clock import StageClock
from labpipe.protocol.sync import Notifier
from labpipe.worker.handle import Worker

if TYPE_CHECKING:
    from labpipe.master.pipeline import StateChanged
    from labpipe.master.run_pool import RunPool

__all__ = ["Run", "RunEnd", "bounded_error", "MAX_ERROR_CHARS"]

#: The longest error text a history record (and its publication) holds.
MAX_ERROR_CHARS = 4096


def bounded_error(error: str | None, results: str | None = None) -> str | None:
    """error cut to its first ``MAX_ERROR_CHARS`` characters, with a marker saying how
    much was cut and where the full text is (the results file, when there is one)."""
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    where = ("the full text is in the results file" if results is not None
             else "the full text is in the master's log")
    return (f"{error[:MAX_ERROR_CHARS]}... [{len(error) - MAX_ERROR_CHARS} characters "
            f"cut; {where}]")

#: The published fields that ``precedence`` decides by (besides the status).
_DECIDING_FIELDS = frozenset({"priority", "due_date", "flush", "queue_position"})


@dataclass
class RunEnd:
    """How a run left the schedule: status is completed, failed, terminated or deleted."""
    status: str
    error: str | None = None
    results: str | None = None


@dataclass(eq=False)
class Run:
    """A run in a pipeline. ``schedule`` is the scheduler's schedule Notifier."""
    rid: int
    pipeline_name: str
    expid: dict[str, Any]
    priority: int
    due_date: float | None
    flush: bool
    schedule: Notifier = field(repr=False)
    #: the pipeline's, from when the run joins it (None before)
    state_changed: StateChanged | None = field(repr=False)
    repo_msg: str | None = None
    workdir: str | None = None
    repo_rev: str | None = None
    submitted: float = field(default_factory=time.time)
    worker: Worker | None = field(default=None, repr=False)
    termination_requested: bool = False
    #: a client asked the run to pause at its next check (``Scheduler.request_pause``)
    pause_requested: bool = False
    class_name: str | None = None
    devices: list[str] = field(default_factory=list)
    #: when the run first got to each stage (stored with the schedule: what a restarted
    #: master knows of a run's stages)
    stage_times: dict[str, float] = field(default_factory=dict)
    #: the time really spent in each stage, for the history record
    clock: StageClock = field(default_factory=StageClock, repr=False)
    #: changes being written to disk, not applied yet (``ScheduleStore.record_of``
    #: stores them with the run's fields): ``pipeline``, ``priority``, ``expid``...
    staged: dict[str, Any] = field(default_factory=dict)
    #: when a deletion was asked for (stored as the ``deleting`` stage from then on)
    deletion_asked: float | None = None
    #: when the prepare stage took it (stored as the ``preparing`` stage from then on)
    starting_at: float | None = None
    #: how many edits (change, delete) are being written; the prepare stage waits
    edits: int = 0
    #: the pipeline's index of its runs, told of status and rank changes (None outside)
    pool: RunPool | None = field(default=None, repr=False)
    #: who submitted it (``access.caller``), kept with the run and in history
    user: str | None = None
    group: str | None = None
    #: the last tie-breaker of ``precedence`` (NaN at creation: the RID)
    queue_position: float = math.nan
    #: a run of ``execute_now``: goes before every other run of its pipeline
    immediate: bool = False
    #: where an offloaded analysis ran (``offloaded.py``): ``{"dask_scheduler",
    #: "dask_worker"}``; None: in the run's worker
    analyzed_on: dict[str, str | None] | None = None
    _status: RunStatus = RunStatus.pending

    def __post_init__(self) -> None:
        if math.isnan(self.queue_position):
            self.queue_position = float(self.rid)

    def publish(self) -> None:
        """Put the run's entry into the schedule (once, at submission)."""
        entry = {
            "pipeline": self.pipeline_name, "expid": self.expid,
            "priority": self.priority, "due_date": self.due_date, "flush": self.flush,
            "status": self._status.value, "repo_msg": self.repo_msg,
            "queue_position": self.queue_position}
        if self.immediate:
            entry["immediate"] = True
        self.schedule[self.rid] = entry

    @property
    def status(self) -> RunStatus:
        return self._status

    @status.setter
    def status(self, value: RunStatus) -> None:
        old, self._status = self._status, value
        if self.pool is not None:
            self.pool.status_changed(self, old)
        now = time.time()
        self.stage_times.setdefault(value.value, now)
        self.clock.enter(value.value, now)
        if self.rid in self.schedule.raw_view:
            self.schedule[self.rid]["status"] = value.value
        self._wake_stages()

    def _wake_stages(self) -> None:
        if self.state_changed is not None:  # None: not in a pipeline yet
            self.state_changed.notify()

    def set_field(self, key: str, value: Any) -> None:
        """Change a published field of the entry (e.g. priority); the stages are woken
        only for a field they decide by (not for progress, eta, blocked_by...)."""
        deciding = key in _DECIDING_FIELDS
        if deciding:
            setattr(self, key, value)
            if self.pool is not None:
                self.pool.rank_changed(self)
        if self.rid in self.schedule.raw_view:
            self.schedule[self.rid][key] = value
        if deciding:
            self._wake_stages()

    @contextlib.contextmanager
    def editing(self) -> Iterator[None]:
        """Hold the prepare stage off this run while an edit of it is written."""
        self.edits += 1
        try:
            yield
        finally:
            self.edits -= 1
            self._wake_stages()

    @property
    def deleting(self) -> bool:
        return self._status == RunStatus.deleting
