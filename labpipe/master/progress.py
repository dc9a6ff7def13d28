"""Progress and time estimates of running runs.

Experiments call ``self.scheduler.set_progress(done, total=None, message="")``; the
worker streams a one-way ``set_progress`` message ``{"done", "total", "message",
"time"}`` (``virtual_devices.Scheduler``). The master publishes, in the run's schedule
entry (new keys; the ARTIQ keys are unchanged):

- ``started``: when its run stage began (UNIX time), set when the run stage starts;
- ``progress``: ``{"done", "total", "message"}`` or None before the first report;
- ``eta``: the estimated end of the run stage (UNIX time) or None when unknown.

The estimate (``estimate_end``, pure): with a report of ``done`` out of ``total``
(``0 < done < total``) the run is assumed to go on at its mean rate since ``started``;
``done >= total`` means the run is about to end (eta = time of the report). Before any
usable report, the median run-stage duration of the last earlier completed runs of the
same experiment (same file or content, same class) gives ``started + median``; without
any, None.

Durations come from the runs this master saw complete (``note_run_end``) and, when a
``history`` (``labpipe.master.history.History``-like, with ``notifier.raw_view`` of
records carrying ``expid``, ``status`` and ``stages``) is attached, from its records.

Publication is rate-limited per run (``ProgressTracker.interval``, 0.1 s): a report that
comes sooner than ``interval`` after the last publication is held back, the latest
replacing earlier ones, and published when the interval is over; so a tight loop of
``set_progress`` costs subscribers at most ~10 updates per second per run and the last
report is never lost.
"""

import asyncio
import hashlib
import logging
import numbers
import statistics
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from labpipe.master.run import Run, RunEnd

__all__ = ["Progress", "ProgressTracker", "estimate_end", "experiment_key"]

logger = logging.getLogger(__name__)

#: How many earlier durations of one experiment are kept for the estimate.
KEEP_DURATIONS = 20


@dataclass(frozen=True)
class Progress:
    """One progress report of a run."""
    done: float
    total: float | None
    message: str
    time: float

    def to_wire(self) -> dict:
        return {"done": self.done, "total": self.total, "message": self.message}


def estimate_end(started: float | None, progress: Progress | None,
                 past_durations: list[float]) -> float | None:
    """The estimated end time of a run stage that began at ``started`` (None if it has
    not begun); see the module docstring."""
    if started is None:
        return None
    if progress is not None and progress.total:
        if progress.done >= progress.total:
            return progress.time
        elapsed = progress.time - started
        if progress.done > 0 and elapsed > 0:
            rate = progress.done / elapsed
            return progress.time + (progress.total - progress.done) / rate
    if past_durations:
        return started + statistics.median(past_durations)
    return None


def experiment_key(expid: dict) -> tuple:
    """What makes two runs "the same experiment": the file (or a digest of the content)
    and the class name."""
    content = expid.get("content")
    source = (("content", hashlib.sha1(content.encode("utf-8")).hexdigest())
              if isinstance(content, str) else ("file", expid.get("file")))
    return source + (expid.get("class_name"),)


def parse_report(msg: dict) -> Progress:
    """A ``set_progress`` message as a Progress; TypeError/ValueError when malformed."""
    done, total = msg.get("done"), msg.get("total")
    for name, value in (("done", done), ("total", total)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, numbers.Real)):
            raise TypeError(f"set_progress: {name} must be a number, not {value!r}")
    if done is None:
        raise ValueError("set_progress: done is required")
    if total is not None and total < 0:
        raise ValueError(f"set_progress: total must not be negative ({total!r})")
    t = msg.get("time")
    t = float(t) if isinstance(t, numbers.Real) and not isinstance(t, bool) else time.time()
    return Progress(done, total, str(msg.get("message", ""))[:1000], t)


class ProgressTracker:
    """Publishes ``started``, ``progress`` and ``eta`` in the entries of running runs.

    ``run_started(run)`` when a run's run stage begins (not on resume); ``report(run,
    msg)`` for each ``set_progress`` message; ``note_run_end(run, end)`` as an
    ``on_run_end`` listener (records the duration, drops pending publications).
    Runs are ``labpipe.master.run.Run``: entries change only through ``run.set_field``.
    """

    def __init__(self, interval: float = 0.1, history: Any = None):
        self.interval = interval
        self.history = history
        self._durations: dict[Any, deque[float]] = defaultdict(
            lambda: deque(maxlen=KEEP_DURATIONS))
        self._latest: dict[int, Progress] = {}
        self._last_published: dict[int, float] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    # --- durations ------------------------------------------------------------------

    def past_durations(self, expid: dict) -> list[float]:
        """Run-stage durations of earlier completed runs of the same experiment."""
        key = experiment_key(expid)
        seen = list(self._durations.get(key, ()))
        if seen:
            return seen
        return self._history_durations(key)

    def _history_durations(self, key: Any) -> list[float]:
        notifier = getattr(self.history, "notifier", None)
        records = getattr(notifier, "raw_view", None)
        if not records:
            return []
        out: list[float] = []
        try:
            for rid in sorted(records, reverse=True):
                record = records[rid]
                if record.get("status") != "completed":
                    continue
                if experiment_key(record.get("expid") or {}) != key:
                    continue
                running = (record.get("stages") or {}).get("running") or {}
                spent = running.get("spent")  # records before it: the stage's span
                if spent is None and "start" in running and "end" in running:
                    spent = running["end"] - running["start"]
                if isinstance(spent, (int, float)) and spent >= 0:
                    out.append(spent)
                if len(out) >= KEEP_DURATIONS:
                    break
        except Exception:  # history is optional: a strange record never breaks a run
            logger.debug("cannot read durations from history", exc_info=True)
            return []
        return out

    # --- events ---------------------------------------------------------------------

    def run_started(self, run: Run) -> None:
        """The run stage of run began: publish ``started``, no progress, a first eta."""
        started = run.stage_times.get("running", time.time())
        run.set_field("started", started)
        run.set_field("progress", None)
        run.set_field("eta", estimate_end(started, None, self.past_durations(run.expid)))

    def report(self, run: Run, msg: dict[str, Any]) -> None:
        """A ``set_progress`` message of run: publish now, or when the interval is up."""
        try:
            progress = parse_report(msg)
        except (TypeError, ValueError) as e:
            logger.warning("RID %d: %s", run.rid, e)
            return
        self._latest[run.rid] = progress
        if run.rid in self._timers:
            return  # a publication is already due: it will take the latest report
        wait = self._last_published.get(run.rid, -1e9) + self.interval - time.monotonic()
        if wait <= 0:
            self._publish(run)
        else:
            self._timers[run.rid] = asyncio.get_running_loop().call_later(
                wait, self._publish, run)

    def _publish(self, run: Run) -> None:
        self._timers.pop(run.rid, None)
        progress = self._latest.get(run.rid)
        if progress is None or run.rid not in run.schedule.raw_view:
            return
        self._last_published[run.rid] = time.monotonic()
        started = run.stage_times.get("running")
        run.set_field("progress", progress.to_wire())
        run.set_field("eta", estimate_end(started, progress,
                                          self.past_durations(run.expid)))

    def note_run_end(self, run: Run, end: RunEnd) -> None:
        """on_run_end listener: keep the run stage's duration of a completed run, and
        forget the run."""
        timer = self._timers.pop(run.rid, None)
        if timer is not None:
            timer.cancel()
        self._latest.pop(run.rid, None)
        self._last_published.pop(run.rid, None)
        if end.status != "completed":
            return
        running = run.clock.summary(time.time()).get("running")
        if running is not None:  # the time it ran: pauses left out
            self._durations[experiment_key(run.expid)].append(running["spent"])

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
