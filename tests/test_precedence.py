"""The scheduler's decisions as pure functions: no processes, no event loop."""

from dataclasses import dataclass

from labpipe.master.precedence import (
    RunStatus, flush_done, next_to_analyze, next_to_prepare, next_to_run, priority_key,
    should_yield)


@dataclass(eq=False)
class R:
    rid: int
    priority: int = 0
    due_date: float | None = None
    status: RunStatus = RunStatus.pending
    flush: bool = False
    queue_position: float | None = None  # None: the RID, as for a run nobody moved
    immediate: bool = False

    def __post_init__(self):
        if self.queue_position is None:
            self.queue_position = float(self.rid)


NOW = 1000.0


def test_priority_then_due_date_then_rid():
    runs = [R(1), R(2, priority=1), R(3, priority=1, due_date=NOW - 10), R(4, priority=1)]
    # equal priority: a run without due date counts as the earliest
    order = sorted(runs, key=priority_key, reverse=True)
    assert [r.rid for r in order] == [2, 4, 3, 1]


def test_due_date_not_reached_is_not_eligible_and_gives_wait_time():
    later = R(1, priority=5, due_date=NOW + 30)
    assert next_to_prepare([later], NOW) == 30.0
    low = R(2)
    assert next_to_prepare([later, low], NOW) is low


def test_earlier_due_date_first_among_reached():
    a, b = R(1, due_date=NOW - 5), R(2, due_date=NOW - 50)
    assert next_to_prepare([a, b], NOW) is b


def test_empty_pool_needs_no_timed_check():
    assert next_to_prepare([], NOW) is None


def test_prepare_ahead_only_over_every_prepared_run():
    prepared = R(1, status=RunStatus.prepare_done)
    same = R(2)
    assert next_to_prepare([prepared, same], NOW) is None
    higher = R(3, priority=2)
    assert next_to_prepare([prepared, same, higher], NOW) is higher
    # a not-yet-due higher run is worth a timed check; a lower one is not
    assert next_to_prepare([prepared, R(4, priority=2, due_date=NOW + 7)], NOW) == 7.0
    assert next_to_prepare([prepared, R(5, due_date=NOW + 7)], NOW) is None


def test_running_run_does_not_block_prepare():
    running = R(1, status=RunStatus.running)
    nxt = R(2)
    assert next_to_prepare([running, nxt], NOW) is nxt


def test_next_to_run_takes_highest_prepared_or_paused():
    paused = R(1, status=RunStatus.paused)
    prepared = R(2, priority=3, status=RunStatus.prepare_done)
    pending = R(3, priority=9)
    assert next_to_run([paused, prepared, pending]) is prepared
    assert next_to_run([paused, pending]) is paused
    assert next_to_run([pending]) is None


def test_next_to_analyze():
    a, b = R(1, status=RunStatus.run_done), R(2, priority=1, status=RunStatus.run_done)
    assert next_to_analyze([a, b, R(3, status=RunStatus.running)]) is b
    assert next_to_analyze([R(4)]) is None


def test_should_yield_only_to_higher_prepared():
    running = R(1, priority=1, status=RunStatus.running)
    assert not should_yield(running, [running, R(2, priority=5)])  # not prepared yet
    assert not should_yield(running, [running, R(3, priority=1, status=RunStatus.prepare_done)])
    assert should_yield(running, [running, R(4, priority=2, status=RunStatus.prepare_done)])


def test_flush_waits_for_equal_or_higher_runs_past_pending():
    flushing = R(5, priority=1, status=RunStatus.flushing, flush=True)
    assert flush_done(flushing, [flushing, R(1, priority=1), R(2, priority=0,
                                                                status=RunStatus.running)])
    assert not flush_done(flushing, [flushing, R(3, priority=1, status=RunStatus.running)])
    assert not flush_done(flushing, [flushing, R(4, priority=2, status=RunStatus.run_done)])
    assert flush_done(flushing, [flushing, R(6, priority=2, status=RunStatus.deleting)])
