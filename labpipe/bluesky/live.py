"""Streaming a plan's event data into datasets while it runs.

``LiveDatasets(environment)`` is a RunEngine callback. For each event stream of a run
(``primary``, ``baseline``, ``interruptions``, ...) and each field of the stream's
descriptor, it keeps one broadcast dataset::

    bluesky.<stream>.<field>     a list, one entry per event, appended as events come

e.g. ``bluesky.primary.motor`` and ``bluesky.primary.det`` for ``scan([det], motor,
...)``. A dataset is set to ``[]`` when its stream's first descriptor of a run arrives
(a later run of the same experiment starts it afresh) and each event appends its value
(``append_to_dataset``, so only the new point travels to the master and the clients).
The datasets are broadcast but not archived: the results file has the same data under
``bluesky/`` (see ``archive.py``).
"""

from __future__ import annotations

from typing import Any

from event_model import DocumentRouter

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
        self._streams: dict[str, str] = {}   # descriptor uid -> stream name
        self._started: set[tuple[str, str]] = set()  # (run uid, stream) set to []

    def descriptor(self, doc):
        name = doc.get("name", "primary")
        self._streams[doc["uid"]] = name
        if (doc["run_start"], name) in self._started:
            return
        self._started.add((doc["run_start"], name))
        for field in doc["data_keys"]:
            self._env.set_dataset(dataset_key(name, field), [], broadcast=True,
                                  archive=False)

    def event(self, doc):
        name = self._streams.get(doc["descriptor"])
        if name is None:
            return
        for field, value in doc["data"].items():
            key = dataset_key(name, field)
            try:
                self._env.append_to_dataset(key, value)
            except KeyError:  # a field the descriptor did not announce
                self._env.set_dataset(key, [value], broadcast=True, archive=False)
