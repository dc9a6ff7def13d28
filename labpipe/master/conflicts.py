"""Device conflicts across pipelines: a pure decision, tested without processes.

A run's devices are the device database keys it requested in build (the worker reports
them with the build outcome; ``Run.devices``). Two runs conflict when they share a
device (after alias resolution, when a resolver is given) and belong to different
pipelines: inside one pipeline runs never overlap anyway.

The run stage does not start (or resume) a run while a run of another pipeline that
shares a device is *in use*: ``running`` or ``paused`` (a paused run keeps its worker
and its devices open, and will resume). The ARTIQ manual leaves this to the user.

A pipeline whose device check is off (``exempt``) neither waits for other pipelines nor
makes them wait.
"""

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from labpipe.master.precedence import RunStatus

__all__ = ["Conflict", "IN_USE", "conflicts", "blocked_by"]

#: Statuses in which a run holds its devices.
IN_USE = frozenset({RunStatus.running, RunStatus.paused})


@dataclass(frozen=True)
class Conflict:
    """Run ``rid`` of ``pipeline`` holds ``devices`` that the waiting run needs."""
    rid: int
    pipeline: str
    devices: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        """The shape published in the schedule entry's ``blocked_by`` list."""
        return {"rid": self.rid, "pipeline": self.pipeline, "devices": list(self.devices)}


def _identity(key: str) -> str:
    return key


class Holder(Protocol):
    """What ``conflicts`` reads of a run (``master.run.Run`` has it)."""

    @property
    def rid(self) -> int: ...
    @property
    def pipeline_name(self) -> str: ...
    @property
    def status(self) -> RunStatus: ...
    @property
    def devices(self) -> Collection[str]: ...


def conflicts(run: Holder, others: Iterable[Holder], *, resolve: Callable[[str], str] = _identity,
              exempt: Collection[str] = ()) -> list[Conflict]:
    """The in-use runs of other pipelines that share a device with ``run``, by RID.

    ``run`` and ``others`` have ``rid``, ``pipeline_name``, ``status`` and ``devices``;
    ``resolve(key)`` maps a requested key to the device it names (aliases followed; a
    key it cannot resolve stands for itself); ``exempt`` lists pipelines whose check is
    off. Empty when the run may start."""
    if run.pipeline_name in exempt or not run.devices:
        return []

    def canonical(keys: Iterable[str]) -> set[str]:
        out = set()
        for key in keys:
            try:
                out.add(resolve(key))
            except Exception:
                out.add(key)
        return out

    mine = canonical(run.devices)
    found = []
    for other in others:
        if (other is run or other.pipeline_name == run.pipeline_name
                or other.pipeline_name in exempt or other.status not in IN_USE):
            continue
        shared = mine & canonical(other.devices)
        if shared:
            found.append(Conflict(other.rid, other.pipeline_name, tuple(sorted(shared))))
    return sorted(found, key=lambda c: c.rid)


def blocked_by(found: list[Conflict]) -> list[dict[str, Any]] | None:
    """The ``blocked_by`` value of a schedule entry: None when nothing blocks."""
    return [c.to_wire() for c in found] or None
