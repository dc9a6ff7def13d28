"""Queue positions: where a run stands among the runs of its pipeline.

Every run has a ``queue_position`` (a float, published in its schedule entry and kept
in the schedule store); ``precedence`` uses it in place of the RID as the last
tie-breaker, after ARTIQ's priority and due date. A new run goes to the back: its
position is its RID, or more when runs were moved to the back meanwhile, so a master
where nobody moves anything orders runs exactly as ARTIQ does.

``schedule.move(rid, before=RID | after=RID | pos=...)`` and ``move_batch([...], ...)``
give pending runs new positions; ``submit(..., before=, after=, pos=)`` places a new
run. Places:

- ``before=RID`` / ``after=RID``: right before/after that run (of the same pipeline) in
  position order;
- ``pos="front"`` / ``pos="back"``: before/after every run of the pipeline;
- ``pos=i`` (an int): at index ``i`` of the pipeline's queue (its runs that have not
  started running, first to go first): 0 is the front, ``i`` past the end the back;
  negative counts from the back, -1 being the back itself (as the queueserver's).

A batch keeps the order it is given in. A new position lies between its neighbours'; when
two neighbours are too close for that, the pipeline is renumbered (every run's record
written again in the same transaction). Each change is on disk before it is applied
and published; ``clear(pipeline)`` deletes every run of a pipeline that has not started
running, with one commit.

Only pending runs can be moved (a run being prepared, or further on, is refused).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from labpipe.master.precedence import RunStatus, priority_key
from labpipe.master.run import Run

if TYPE_CHECKING:
    from labpipe.master.scheduler import Scheduler

__all__ = ["QueueOrder", "Place", "BACK", "check_place", "QUEUED"]

logger = logging.getLogger(__name__)

#: Statuses of runs still in their pipeline's queue (not started running).
QUEUED = (RunStatus.pending, RunStatus.flushing, RunStatus.preparing,
          RunStatus.prepare_done)

#: A checked place: ("before"|"after", rid) or ("front"|"back", None) or ("index", i).
Place = tuple[str, Any]
#: Where a run goes unless told otherwise.
BACK: Place = ("back", None)

#: The smallest gap between neighbouring positions, relative to their size.
_MIN_GAP = 1e-9


def check_place(before: object = None, after: object = None, pos: object = None) -> Place:
    """The one place given (TypeError/ValueError naming the argument when the
    arguments are wrong); ("back", None) when none is."""
    given = [name for name, value in (("before", before), ("after", after), ("pos", pos))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of before, after and pos, not {' and '.join(given)}")
    for name, value in (("before", before), ("after", after)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be a RID (an integer), not {value!r}")
            return (name, value)
    if pos is None or pos == "back":
        return BACK
    if pos == "front":
        return ("front", None)
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise ValueError(f"pos must be 'front', 'back' or an index, not {pos!r}")
    return ("index", pos)


def _spread(lo: float | None, hi: float, count: int) -> list[float] | None:
    """count positions in increasing order strictly between lo and hi (lo None: any
    below hi); None when lo and hi are too close for them."""
    if lo is None:
        return [hi - count + i for i in range(count)]
    step = (hi - lo) / (count + 1)
    if step <= _MIN_GAP * max(1.0, abs(lo), abs(hi)):
        return None
    positions = [lo + step * (i + 1) for i in range(count)]
    if not all(a < b for a, b in zip([lo, *positions], [*positions, hi])):
        return None
    return positions


class QueueOrder:
    """The positions of a scheduler's runs, and the ``move``/``move_batch``/``clear``
    methods of the ``schedule`` target (``Scheduler`` delegates to them)."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: the highest position given so far: a run sent to the back goes after it
        self.last = -1.0

    # --- positions of new and restored runs -------------------------------------------

    def restored(self, run: Run) -> None:
        """A run put back at start keeps its position; later ones go after it."""
        self.last = max(self.last, run.queue_position)

    def back(self, count: int = 1, rid: int = -1) -> list[float]:
        """count positions after every position given so far (and not below rid, so
        that a master where nothing moves keeps the RIDs as positions)."""
        first = max(self.last + 1.0, float(rid))
        positions = [first + i for i in range(count)]
        self.last = positions[-1]
        return positions

    async def for_submission(self, pipeline_name: str, place: Place) -> float | None:
        """The queue position of a new run of the pipeline at place; None for the back
        (``back(1, rid)`` once its RID is known). Refuses a place that names no run of
        the pipeline before a RID is taken for it."""
        if place == BACK:
            return None
        return (await self._placed(pipeline_name, [], place))[0]

    # --- RPC ----------------------------------------------------------------------------

    async def move(self, rid: int, before: object = None, after: object = None,
                   pos: object = None) -> None:
        """Move a pending run to a new place in its pipeline's queue."""
        await self.move_batch([rid], before, after, pos)

    async def move_batch(self, rids: object, before: object = None, after: object = None,
                         pos: object = None) -> None:
        """Move pending runs of one pipeline, as a block in the order given, to a new
        place; on disk before it is applied. A call that fails moves nothing."""
        place = check_place(before, after, pos)
        if (not isinstance(rids, (list, tuple)) or not rids
                or not all(isinstance(r, int) and not isinstance(r, bool) for r in rids)):
            raise TypeError("rids must be a non-empty list of RIDs")
        if len(set(rids)) != len(rids):
            raise ValueError("a RID is given twice")
        queue = self.scheduler.queue
        async with queue.edit_lock:
            runs = [queue.pending_run(rid, "moved") for rid in rids]
            pipelines = {run.pipeline_name for run in runs}
            if len(pipelines) > 1:
                raise ValueError(f"RIDs {', '.join(map(str, rids))} are in different "
                                 f"pipelines ({', '.join(sorted(pipelines))}): move each "
                                 f"within its own")
            if place[0] in ("before", "after") and place[1] in rids:
                raise ValueError(f"RID {place[1]} cannot be moved {place[0]} itself")
            positions = await self._placed(runs[0].pipeline_name, runs, place)
            await self._commit(dict(zip(runs, positions)))
        logger.info("RID(s) %s moved %s", ", ".join(map(str, rids)),
                    "to the " + place[0] if place[1] is None else f"{place[0]} {place[1]}")

    async def clear(self, pipeline_name: object) -> list[int]:
        """Delete every run of the pipeline that has not started running (one commit
        for all); returns their RIDs. The deletions are on disk before it returns."""
        if not isinstance(pipeline_name, str) or not pipeline_name:
            raise ValueError("pipeline_name must be a non-empty string")
        pipeline = self.scheduler.pipelines.get(pipeline_name)
        if pipeline is None:
            return []
        runs = [run for run in pipeline.runs.in_status(*QUEUED) if not run.deleting]
        await self.scheduler.delete_runs(runs)
        rids = sorted(run.rid for run in runs)
        if rids:
            logger.info("pipeline %s cleared: %d run(s) deleted", pipeline_name, len(rids))
        return rids

    # --- placing ------------------------------------------------------------------------

    def _others(self, pipeline_name: str, moving: Sequence[Run]) -> list[Run]:
        pipeline = self.scheduler.pipelines.get(pipeline_name)
        if pipeline is None:
            return []
        moving_ids = {id(run) for run in moving}
        return [run for run in pipeline.runs.values() if id(run) not in moving_ids
                and not run.deleting]

    async def _placed(self, pipeline_name: str, moving: Sequence[Run],
                      place: Place) -> list[float]:
        """New positions for the runs moving to place (count 1 for a submission),
        renumbering the pipeline first when its neighbours are too close."""
        count = max(1, len(moving))
        for attempt in range(2):
            others = self._others(pipeline_name, moving)
            positions = self._between(others, count, place)
            if positions is not None:
                return positions
            if attempt == 0:
                await self._renumber(others)
        raise RuntimeError(f"pipeline {pipeline_name}: no queue position left after "
                           f"renumbering")  # not reached: renumbered gaps are 1 wide

    def _between(self, others: list[Run], count: int, place: Place) -> list[float] | None:
        kind, value = place
        if kind == "index":
            queue = sorted((r for r in others if r.status in QUEUED), key=priority_key,
                           reverse=True)
            index = value if value >= 0 else len(queue) + 1 + value
            if index >= len(queue):
                kind, value = "back", None
            elif index <= 0:
                kind, value = "front", None
            else:
                kind, value = "before", queue[index].rid
        if kind == "back":
            return self.back(count)
        ordered = sorted(r.queue_position for r in others)
        if kind == "front":
            if not ordered:
                return self.back(count)
            return _spread(None, ordered[0], count)
        target = self._target(others, value)
        here = target.queue_position
        if kind == "before":
            i = bisect.bisect_left(ordered, here)
            return _spread(ordered[i - 1] if i > 0 else None, here, count)
        i = bisect.bisect_right(ordered, here)
        if i == len(ordered):
            return self.back(count)
        return _spread(here, ordered[i], count)

    def _target(self, others: Iterable[Run], rid: int) -> Run:
        for run in others:
            if run.rid == rid:
                return run
        found = self.scheduler.find_or_none(rid)
        if found is None:
            raise KeyError(f"RID {rid} is not in the schedule")
        raise ValueError(f"RID {rid} is in pipeline {found.pipeline_name}, not in the "
                         f"pipeline of the run(s) being placed")

    async def _renumber(self, runs: list[Run]) -> None:
        """Give the runs positions 1 apart, in their current order (on disk first)."""
        ordered = sorted(runs, key=lambda r: (r.queue_position, r.rid))
        if not ordered:
            return
        base = float(int(ordered[0].queue_position))
        logger.info("pipeline %s: queue positions renumbered", ordered[0].pipeline_name)
        await self._commit({run: base + i for i, run in enumerate(ordered)})
        self.last = max(self.last, base + len(ordered) - 1)

    async def _commit(self, positions: dict[Run, float]) -> None:
        """Store the new positions (one transaction), then apply and publish them."""
        store = self.scheduler.store
        if store is not None:
            with contextlib.ExitStack() as editing:
                for run, position in positions.items():
                    run.staged = {**run.staged, "queue_position": position}
                    editing.enter_context(run.editing())  # the prepare stage waits
                try:
                    await store.write_records(list(positions))
                finally:
                    for run in positions:
                        run.staged.pop("queue_position", None)
        for run, position in positions.items():
            if self.scheduler.find_or_none(run.rid) is run and not run.deleting:
                run.set_field("queue_position", position)
