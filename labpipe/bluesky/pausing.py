"""Pausing a plan for the scheduler, at the RunEngine's checkpoints.

A checkpoint is where a plan may be paused and resumed (bluesky rewinds to the last
checkpoint on resume). ``scheduler_checkpoints(scheduler)`` is a RunEngine preprocessor:
after every ``checkpoint`` message it asks ``scheduler.check_pause()`` and, when the run
should yield (a run of higher precedence waits, or termination was requested), it
inserts ``Msg("pause")``. The RunEngine then pauses right at that checkpoint and
``RE(...)`` raises ``RunEngineInterrupted`` in the experiment's thread.

``run_until_done(engine, plan, scheduler, md)`` drives the plan: each time the
RunEngine is interrupted (by the preprocessor, or by a ``pause`` message of the plan
itself) it calls ``scheduler.pause()``, which returns once the runs of higher precedence
have run, then resumes the plan from its checkpoint. When ``scheduler.pause()`` raises
``TerminationRequested``, the plan is aborted (its cleanup runs and its stop document
says ``exit_status="abort"``; bluesky 1.x drops the reason given to ``abort()`` on a
paused RunEngine, so its ``reason`` is empty) and ``TerminationRequested`` propagates, so that the run
ends as terminated with its results file written. Suspenders installed on the
RunEngine, or wrapped around the plan, act inside the RunEngine as usual.
"""

from __future__ import annotations

import logging
from typing import Any

from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg, RunEngineInterrupted

from labpipe.language.exceptions import TerminationRequested

__all__ = ["scheduler_checkpoints", "run_until_done"]

logger = logging.getLogger(__name__)

TERMINATION_REASON = "termination requested through the labpipe scheduler"


def scheduler_checkpoints(scheduler: Any):
    """A RunEngine preprocessor pausing the plan at checkpoints when the scheduler says
    so (see the module docstring)."""

    def pause_if_asked():
        if scheduler.check_pause():
            yield Msg("pause", None, defer=False)

    def after_checkpoint(msg):
        if msg.command == "checkpoint":
            return None, pause_if_asked()
        return None, None

    def preprocessor(plan):
        return (yield from plan_mutator(plan, after_checkpoint))

    return preprocessor


def run_until_done(engine, plan, scheduler: Any = None, md: dict | None = None):
    """Run ``plan`` on ``engine`` to its end, yielding to the scheduler whenever the
    RunEngine pauses; returns what ``engine(...)`` returns (the start uids)."""
    try:
        return engine(plan, **(md or {}))
    except RunEngineInterrupted:
        pass
    while True:
        if scheduler is None:
            engine.abort("the plan paused and there is no scheduler to resume it")
            raise RuntimeError("the plan paused and there is no scheduler to resume it")
        try:
            logger.info("plan paused at a checkpoint; yielding to the scheduler")
            scheduler.pause()
        except TerminationRequested:
            logger.info("termination requested: aborting the plan")
            engine.abort(TERMINATION_REASON)
            raise
        try:
            logger.info("resuming the plan from its last checkpoint")
            return engine.resume()
        except RunEngineInterrupted:
            continue
