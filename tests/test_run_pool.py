"""RunPool gives the answers of precedence's pure functions, from its indices.

Random histories of runs joining, leaving, changing status, priority and due date,
with the clock moving on; after every step the pool's next run for each stage is the
one ``precedence`` picks from all the runs (for the prepare stage: the same run, or,
when there is none to take, a wait no later than precedence's).
"""

import random

import pytest

from labpipe.master import precedence
from labpipe.master.precedence import RunStatus
from labpipe.master.run import Run
from labpipe.master.run_pool import RunPool
from labpipe.protocol.sync import Notifier

STATUSES = [RunStatus.pending, RunStatus.prepare_done, RunStatus.paused, RunStatus.run_done,
            RunStatus.running, RunStatus.analyzing]


def make_run(rid: int, rng: random.Random, now: float) -> Run:
    return Run(rid=rid, pipeline_name="main", expid={}, priority=rng.randint(-2, 2),
               due_date=rng.choice([None, None, now - 5, now + rng.uniform(0, 20)]),
               flush=False, schedule=Notifier({}), state_changed=None)


def check(pool: RunPool, runs: dict[int, Run], now: float) -> None:
    expected = precedence.next_to_prepare(runs.values(), now)
    got = pool.next_to_prepare(now)
    if isinstance(expected, Run):
        assert got is expected
    else:
        assert not isinstance(got, Run)
        if expected is not None:  # the pool may wake sooner, never later
            assert got is not None and got <= expected + 1e-9
    assert pool.next_to_run() is precedence.next_to_run(runs.values())
    assert pool.next_to_analyze() is precedence.next_to_analyze(runs.values())
    assert set(pool.runs) == set(runs)


@pytest.mark.parametrize("seed", range(20))
def test_the_pool_picks_what_precedence_picks(seed: int) -> None:
    rng = random.Random(seed)
    pool, runs, now, rid = RunPool(), {}, 1000.0, 0
    for _ in range(400):
        action = rng.choice(["add", "add", "remove", "status", "priority", "due", "time"])
        if action == "add" or not runs:
            run = make_run(rid, rng, now)
            rid += 1
            pool.add(run)
            runs[run.rid] = run
        else:
            run = runs[rng.choice(list(runs))]
            if action == "remove":
                pool.remove(run)
                del runs[run.rid]
            elif action == "status":
                run.status = rng.choice(STATUSES)
            elif action == "priority":
                run.set_field("priority", rng.randint(-2, 2))
            elif action == "due":
                run.set_field("due_date", rng.choice([None, now - 1, now + rng.uniform(0, 20)]))
            else:
                now += rng.uniform(0, 8)
        check(pool, runs, now)


def test_stale_entries_do_not_pile_up() -> None:
    """Runs submitted and deleted in a pipeline that never prepares (held): the
    pool's memory follows its runs, not every run it ever held."""
    pool, rng = RunPool(), random.Random(1)
    for rid in range(10_000):
        run = make_run(rid, rng, 0.0)
        pool.add(run)
        pool.remove(run)
    assert len(pool._due) + len(pool._later) <= 64 + 2
