"""Which run goes next: pure functions of a pipeline's runs, tested without processes.

The rules are ARTIQ's ("Experiment scheduling" in the ARTIQ manual):

1. A run with a due date is not eligible before that date.
2. Higher priority goes first.
3. Then the earlier due date (a run without one counts as the earliest).
4. Then the lower RID, so that equal runs go in submission order.

labpipe's queue control changes two things, leaving ARTIQ's order as it is for runs
that nobody moved: rule 4 compares queue positions (``queue_position``, the RID until
a ``schedule.move``; RID breaks the tie, if any), and a run of ``execute_now``
(``immediate``) goes before every other run of its pipeline.

``priority_key`` orders runs by 2-4 (larger key = goes first). The prepare stage may
prepare ahead only a run that takes precedence over every run already prepared; the run
stage takes the prepared (or paused) run with the highest key; a running run should yield
at ``pause()`` when a prepared run has a higher key.

Every function takes the runs as an iterable of objects with the attributes ``rid``,
``priority``, ``due_date`` (float or None), ``queue_position`` (float), ``immediate``
(bool), ``status`` (a ``RunStatus``), ``flush``.
"""

from collections.abc import Iterable
from enum import Enum
from typing import Protocol, TypeVar


class RunStatus(str, Enum):
    """The statuses of wire-compat.md, in the order a run normally passes them."""
    pending = "pending"
    flushing = "flushing"
    preparing = "preparing"
    prepare_done = "prepare_done"
    running = "running"
    paused = "paused"
    run_done = "run_done"
    analyzing = "analyzing"
    deleting = "deleting"


class Ranked(Protocol):
    """What these functions read of a run (``master.run.Run`` has it)."""

    @property
    def rid(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def due_date(self) -> float | None: ...
    @property
    def queue_position(self) -> float: ...
    @property
    def immediate(self) -> bool: ...
    @property
    def status(self) -> RunStatus: ...


R = TypeVar("R", bound=Ranked)
#: The ordering key of ``priority_key``: immediate, priority, due date, position, RID.
Key = tuple[int, int, float, float, int]


def priority_key(run: Ranked) -> Key:
    """The key by which runs are ordered: larger goes first."""
    return (int(run.immediate), run.priority, -(run.due_date or 0.0),
            -run.queue_position, -run.rid)


def _max_key(runs: Iterable[Ranked], statuses: tuple[RunStatus, ...]) -> Key | None:
    return max((priority_key(r) for r in runs if r.status in statuses), default=None)


def next_to_prepare(runs: Iterable[R], now: float) -> R | float | None:
    """The run the prepare stage should start now, else the seconds until one may be due
    (a float), else None when only a change of the pool can make one eligible."""
    runs = list(runs)
    prepared_max = _max_key(runs, (RunStatus.prepare_done,))

    def takes_precedence(r: Ranked) -> bool:
        return prepared_max is None or priority_key(r) > prepared_max

    pending = [r for r in runs if r.status == RunStatus.pending]
    due = [r for r in pending if r.due_date is None or r.due_date <= now]
    candidate = max(due, key=priority_key, default=None)
    if candidate is not None and takes_precedence(candidate):
        return candidate
    return min((r.due_date - now for r in pending
                if r.due_date is not None and r.due_date > now and takes_precedence(r)),
               default=None)


def next_to_run(runs: Iterable[R]) -> R | None:
    """The prepared or paused run the run stage should run (or resume) now, or None."""
    ready = [r for r in runs if r.status in (RunStatus.prepare_done, RunStatus.paused)]
    return max(ready, key=priority_key, default=None)


def next_to_analyze(runs: Iterable[R]) -> R | None:
    """The run whose run stage is done that the analyze stage should take, or None."""
    done = [r for r in runs if r.status == RunStatus.run_done]
    return max(done, key=priority_key, default=None)


def should_yield(running: Ranked, runs: Iterable[Ranked]) -> bool:
    """Whether the running run would yield at pause(): a prepared run outranks it."""
    prepared_max = _max_key(runs, (RunStatus.prepare_done,))
    return prepared_max is not None and prepared_max > priority_key(running)


def flush_done(flushing: Ranked, runs: Iterable[Ranked]) -> bool:
    """Whether a flushing run may start preparing: every other run of its priority or
    higher that has left the pending state has left the pipeline."""
    return all(r is flushing
               or r.status in (RunStatus.pending, RunStatus.deleting)
               or r.priority < flushing.priority
               for r in runs)
