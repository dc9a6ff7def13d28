"""The runs of one pipeline, indexed so that a stage finds its next run without looking
at every pending one.

``precedence`` states the rules as pure functions of all of a pipeline's runs; a
pipeline with thousands of pending runs cannot afford to call them at every wake-up
(every submit wakes every stage). ``RunPool`` gives the same answers from indices kept
as runs come, go, change status or change what they are ranked by:

- runs by status (a few are past pending; the run and analyze stages look only at
  those);
- the pending runs that are due, in a heap by ``priority_key`` (larger first);
- the pending runs with a future due date, in a heap by due date; each is moved to the
  first heap once its date has come.

Heap entries are never removed in place: an entry whose run left, is no longer pending,
or is ranked differently now is stale and dropped when it comes to the top (a change
pushes a fresh entry). ``tests/test_run_pool.py`` checks every answer against
``precedence``'s functions over random histories.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from labpipe.master import precedence
from labpipe.master.precedence import Key, RunStatus, priority_key

if TYPE_CHECKING:
    from labpipe.master.run import Run

__all__ = ["RunPool"]

#: A heap entry of a due pending run: its negated key (heapq pops the smallest), RID.
_Ranked = tuple[Key, int]


def _negated(key: Key) -> Key:
    return (-key[0], -key[1], -key[2], -key[3], -key[4])


class RunPool:
    """A pipeline's runs (``runs``: RID -> Run) with the indices of the module docstring.
    Runs tell the pool of their changes (``Run.pool``: ``status_changed``,
    ``rank_changed``)."""

    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}
        self._by_status: dict[RunStatus, dict[int, Run]] = {s: {} for s in RunStatus}
        self._due: list[_Ranked] = []
        self._later: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, rid: object) -> bool:
        return rid in self.runs

    def __getitem__(self, rid: int) -> Run:
        return self.runs[rid]

    def get(self, rid: int) -> Run | None:
        return self.runs.get(rid)

    def values(self) -> Iterator[Run]:
        return iter(list(self.runs.values()))

    def add(self, run: Run) -> None:
        """A run joins the pool (and tells it of its changes from now on)."""
        self.runs[run.rid] = run
        self._by_status[run.status][run.rid] = run
        run.pool = self
        self._index_pending(run)

    def remove(self, run: Run) -> None:
        """A run leaves (its heap entries go stale)."""
        if self.runs.get(run.rid) is run:
            del self.runs[run.rid]
            self._by_status[run.status].pop(run.rid, None)
        if run.pool is self:
            run.pool = None
        if len(self._due) + len(self._later) > 2 * len(self.runs) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        """Drop the stale entries (runs that left while pending never reach the top
        of a held pipeline's heaps): memory stays proportional to the runs."""
        self._due, self._later = [], []
        for run in self._by_status[RunStatus.pending].values():
            self._index_pending(run)

    def status_changed(self, run: Run, old: RunStatus) -> None:
        self._by_status[old].pop(run.rid, None)
        self._by_status[run.status][run.rid] = run
        self._index_pending(run)

    def rank_changed(self, run: Run) -> None:
        """Its priority, due date or queue position changed."""
        self._index_pending(run)

    def in_status(self, *statuses: RunStatus) -> list[Run]:
        return [run for status in statuses for run in self._by_status[status].values()]

    def _index_pending(self, run: Run) -> None:
        if run.status != RunStatus.pending:
            return
        if run.due_date is None:
            heapq.heappush(self._due, (_negated(priority_key(run)), run.rid))
        else:  # due or not, it goes through the heap of dates (promoted when due)
            heapq.heappush(self._later, (run.due_date, run.rid))

    def _pending(self, rid: int) -> Run | None:
        run = self.runs.get(rid)
        return run if run is not None and run.status == RunStatus.pending else None

    def _promote(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            due_date, rid = heapq.heappop(self._later)
            run = self._pending(rid)
            if run is not None and run.due_date == due_date:
                heapq.heappush(self._due, (_negated(priority_key(run)), rid))

    def _top_due(self) -> Run | None:
        while self._due:
            negated, rid = self._due[0]
            run = self._pending(rid)
            if run is not None and _negated(priority_key(run)) == negated:
                return run
            heapq.heappop(self._due)
        return None

    def _earliest_later(self) -> float | None:
        while self._later:
            due_date, rid = self._later[0]
            run = self._pending(rid)
            if run is not None and run.due_date == due_date:
                return due_date
            heapq.heappop(self._later)
        return None

    def next_to_prepare(self, now: float) -> Run | float | None:
        """As ``precedence.next_to_prepare`` (which may wait for a later run that
        takes precedence; this waits for the earliest later run, which at worst wakes
        the prepare stage once more for nothing)."""
        self._promote(now)
        prepared = self._by_status[RunStatus.prepare_done].values()
        prepared_max = max((priority_key(r) for r in prepared), default=None)
        candidate = self._top_due()
        if candidate is not None and (prepared_max is None
                                      or priority_key(candidate) > prepared_max):
            return candidate
        earliest = self._earliest_later()
        return None if earliest is None else max(earliest - now, 0.0)

    def next_to_run(self) -> Run | None:
        return precedence.next_to_run(self.in_status(RunStatus.prepare_done,
                                                     RunStatus.paused))

    def next_to_analyze(self) -> Run | None:
        return precedence.next_to_analyze(self.in_status(RunStatus.run_done))
