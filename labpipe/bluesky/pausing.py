"""Pausing a plan for the scheduler, at the RunEngine's checkpoints.

A checkpoint is where a plan may be paused and resumed (bluesky rewinds to the last
checkpoint on resume). ``scheduler_checkpoints(scheduler)`` is a RunEngine preprocessor:
after a ``checkpoint`` message it asks ``scheduler.check_pause()`` (at most once per
``CHECK_INTERVAL``, so that fast plans do not pay a round trip to the master at every
checkpoint) and, when the run should yield (a run of higher precedence waits, or
termination was requested), it inserts ``Msg("pause")``. The RunEngine then pauses
right at that checkpoint and ``RE(...)`` raises ``RunEngineInterrupted`` in the
experiment's thread.

``run_until_done(engine, plan, scheduler, md)`` drives the plan: each time the
RunEngine is interrupted (by the preprocessor, or by a ``pause`` message of the plan
itself) it calls ``scheduler.pause()``, which returns once the runs of higher precedence
have run, then resumes the plan from its checkpoint. When ``scheduler.pause()`` raises
``TerminationRequested``, the plan is aborted (its cleanup runs and its stop document
says ``exit_status="abort"``; bluesky 1.x drops the reason given to ``abort()`` on a
paused RunEngine, so its ``reason`` is empty) and ``TerminationRequested`` propagates,
so that the run ends as terminated with its results file written.

A plan that reaches no checkpoint (suspended, or in a long step) is paused anyway
``TERMINATION_GRACE`` seconds after a termination request (a watcher thread polls
``check_termination`` while the RunEngine runs), then aborted. Suspenders installed on
the RunEngine, or wrapped around the plan, act inside the RunEngine as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any

from bluesky import RunEngine
from bluesky.utils import Msg, RunEngineInterrupted

from labpipe.language.exceptions import TerminationRequested

__all__ = ["scheduler_checkpoints", "run_until_done"]

logger = logging.getLogger(__name__)

TERMINATION_REASON = "termination requested through the labpipe scheduler"


#: Seconds: at most one ``check_pause`` (a round trip to the master, ~0.3 ms) per this
#: interval; checkpoints closer together than that are passed without asking. A pause
#: then happens at most this much later than it would otherwise, still at a checkpoint.
CHECK_INTERVAL = 0.02


#: A plan as the RunEngine drives it.
Plan = Generator[Msg, Any, Any]


def scheduler_checkpoints(scheduler: Any) -> Callable[[Plan], Plan]:
    """A RunEngine preprocessor pausing the plan at checkpoints when the scheduler says
    so (see the module docstring).

    The wrapper passes messages, responses and exceptions through as ``yield from``
    would (``bluesky.preprocessors.plan_mutator`` does the same, but costs a few tenths
    of a millisecond per point more)."""
    last_check = -float("inf")

    def should_pause() -> bool:
        nonlocal last_check
        now = time.monotonic()
        if now - last_check < CHECK_INTERVAL:
            return False
        last_check = now
        return bool(scheduler.check_pause())

    def preprocessor(plan: Plan) -> Plan:
        response: Any = None
        error: BaseException | None = None
        while True:
            try:
                msg = plan.send(response) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                response = yield msg
            except GeneratorExit:
                plan.close()
                raise
            except BaseException as e:  # thrown in by the RunEngine: the plan's to handle
                error = e
                continue
            try:
                pause = msg.command == "checkpoint" and should_pause()
            except BaseException:
                plan.close()
                raise
            if pause:
                try:
                    yield Msg("pause", None, defer=False)
                except GeneratorExit:
                    plan.close()
                    raise
                except BaseException as e:
                    error = e

    return preprocessor


#: Seconds between the termination watcher's ``check_termination`` requests, and how
#: long it lets a plan go on after a termination request before pausing it itself
#: (when no checkpoint came: the plan is suspended, or in a long step).
WATCH_INTERVAL = 0.25
TERMINATION_GRACE = 1.0


class _TerminationWatch:
    """While the RunEngine runs, a thread polling ``scheduler.check_termination()``;
    when termination was requested and the plan has not paused at a checkpoint within
    ``TERMINATION_GRACE`` seconds, it pauses the RunEngine at once
    (``request_pause()``), so that ``run_until_done`` aborts it. Stopped (joined)
    before the experiment's thread talks to the scheduler again."""

    def __init__(self, engine: RunEngine, scheduler: Any):
        self._engine = engine
        self._scheduler = scheduler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _TerminationWatch:
        check = getattr(self._scheduler, "check_termination", None)
        if check is not None:
            self._thread = threading.Thread(target=self._watch, args=(check,),
                                            name="labpipe-termination-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self, check_termination: Callable[[], bool]) -> None:
        requested_at: float | None = None
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                if requested_at is None:
                    if check_termination():
                        requested_at = time.monotonic()
                elif time.monotonic() - requested_at >= TERMINATION_GRACE:
                    if self._engine.state == "running":
                        logger.info("termination requested and no checkpoint came: "
                                    "pausing the plan now")
                        self._engine.request_pause(defer=False)
                    return
            except Exception:  # the RunEngine paused or ended meanwhile: nothing to do
                logger.debug("termination watch", exc_info=True)
                return


def run_until_done(engine: RunEngine, plan: Iterable[Msg], scheduler: Any = None,
                   md: dict[str, Any] | None = None) -> Any:
    """Run ``plan`` on ``engine`` to its end, yielding to the scheduler whenever the
    RunEngine pauses; returns what ``engine(...)`` returns (the start uids)."""
    try:
        with _TerminationWatch(engine, scheduler):
            return engine(plan, **(md or {}))
    except RunEngineInterrupted:
        pass
    while True:
        if scheduler is None:
            engine.abort("the plan paused and there is no scheduler to resume it")
            raise RuntimeError("the plan paused and there is no scheduler to resume it")
        try:
            logger.info("plan paused; yielding to the scheduler")
            scheduler.pause()
        except TerminationRequested:
            logger.info("termination requested: aborting the plan")
            engine.abort(TERMINATION_REASON)
            raise
        try:
            logger.info("resuming the plan from its last checkpoint")
            with _TerminationWatch(engine, scheduler):
                return engine.resume()
        except RunEngineInterrupted:
            continue
