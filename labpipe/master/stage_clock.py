"""The time a run really spends in each stage, for its history record.

A run may visit a stage more than once: ``running``, ``paused``, ``running`` again for
a run that yielded to one of higher priority. ``StageClock.enter(stage, now)`` is
called at every change of stage (``Run.status``); ``summary(ended)`` gives, for every
stage visited, ``{"start": first entered, "end": last left, "spent": seconds in it
over all visits}``, the last stage ending at ``ended``. A ``pause()`` that returns at
once is no visit of ``paused`` (the pipeline resumes such a run without changing its
status), so a run that never waited shows no ``paused`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StageClock", "StageTimes"]

#: One stage of a history record: ``{"start", "end", "spent"}``.
StageTimes = dict[str, float]


@dataclass
class StageClock:
    """Accumulates the time spent in each stage (see the module docstring)."""

    _first: dict[str, float] = field(default_factory=dict)
    _left: dict[str, float] = field(default_factory=dict)
    _spent: dict[str, float] = field(default_factory=dict)
    _current: str | None = None
    _since: float = 0.0

    def enter(self, stage: str, now: float) -> None:
        """The run got to ``stage`` at ``now`` (a UNIX time); entering the stage it is
        in already changes nothing."""
        if stage == self._current:
            return
        self._leave(now)
        self._first.setdefault(stage, now)
        self._current, self._since = stage, now

    def _leave(self, now: float) -> None:
        if self._current is not None:
            spent = max(0.0, now - self._since)
            self._spent[self._current] = self._spent.get(self._current, 0.0) + spent
            self._left[self._current] = now

    @property
    def visited(self) -> bool:
        """Whether any stage was entered."""
        return self._current is not None

    def summary(self, ended: float) -> dict[str, StageTimes]:
        """``{stage: {"start", "end", "spent"}}``, in the order first entered, the
        current stage ending at ``ended``."""
        spent = dict(self._spent)
        left = dict(self._left)
        if self._current is not None:
            spent[self._current] = spent.get(self._current, 0.0) + max(
                0.0, ended - self._since)
            left[self._current] = ended
        return {stage: {"start": start, "end": left[stage], "spent": spent[stage]}
                for stage, start in self._first.items()}
