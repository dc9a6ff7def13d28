"""Streaming a plan's event data into datasets while it runs.

``LiveDatasets(environment)`` is a RunEngine callback. For each event stream of a run
(``primary``, ``baseline``, ``interruptions``, ...) and each field of the stream's
descriptor, it keeps one broadcast dataset::

    bluesky.<stream>.<field>     a list, one entry per event, appended as events come

e.g. ``bluesky.primary.motor`` and ``bluesky.primary.det`` for ``scan([det], motor,
...)``. A stream's first event of a run sets its datasets to ``[value]`` (so a stream
without events, such as ``interruptions`` in a run never paused, makes none, and a later
run of the same experiment starts them afresh); each further event appends its value
(``append_to_dataset``, so only the new point travels to the master and the clients).
The datasets are broadcast but not archived: the results file has the same data under
``bluesky/`` (see ``archive.py``).
"""

from __future__ import annotations

from typing import Any

from event_model import DocumentRouter, Event, EventDescriptor

__all__ = ["LiveDatasets", "dataset_key"]

PREFIX = "bluesky"


def dataset_key(stream: str, field: str) -> str:
    """The dataset key of a stream's field: ``bluesky.<stream>.<field>``."""
    return f"{PREFIX}.{stream}.{field}"


class LiveDatasets(DocumentRouter):
    """Appends every event's data to broadcast datasets (module docstring)."""

    def __init__(self, environment: Any):
        super().__init__()
        self._env = environment
        self._streams: dict[str, tuple[str, str]] = {}  # descriptor -> (run, stream)
        self._started: set[tuple[str, str]] = set()  # (run uid, stream) with events

    def descriptor(self, doc: EventDescriptor) -> None:
        self._streams[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"))

    def event(self, doc: Event) -> Event:
        found = self._streams.get(doc["descriptor"])
        if found is None:
            return doc
        run_uid, name = found
        if (run_uid, name) not in self._started:  # the stream's first event of the run
            self._started.add((run_uid, name))
            for field, value in doc["data"].items():
                self._env.set_dataset(dataset_key(name, field), [value], broadcast=True,
                                      archive=False)
            return doc
        for field, value in doc["data"].items():
            key = dataset_key(name, field)
            try:
                self._env.append_to_dataset(key, value)
            except KeyError:  # a field the first event did not have
                self._env.set_dataset(key, [value], broadcast=True, archive=False)
        return doc  # unchanged (DocumentRouter's event is declared to return one)
