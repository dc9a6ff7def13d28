"""Keeping a run's bluesky documents for its results file.

``DocumentArchive`` is a RunEngine callback (an ``event_model.DocumentRouter``; event
pages are unpacked into events) that keeps every run's documents and event data, and
``groups()`` gives them as the contents of the results file's ``bluesky/`` group.
Layout, readable with plain h5py (``f["bluesky/run_0/primary/data/det"][()]``)::

    bluesky/run_N/uid                       str, the start document's uid (runs in order,
                                            N = 0, 1, ... within this labpipe run)
    bluesky/run_N/start                     the start document, PYON text
    bluesky/run_N/stop                      the stop document, PYON text (absent if the
                                            run never closed)
    bluesky/run_N/STREAM/descriptors        the stream's descriptor documents (a list),
                                            PYON text
    bluesky/run_N/STREAM/seq_num            int array, one entry per event
    bluesky/run_N/STREAM/time               float array, the events' times (Unix time)
    bluesky/run_N/STREAM/data/FIELD         one array per field: row i is event i's value
    bluesky/run_N/STREAM/timestamps/FIELD   float array, the field's timestamps
    bluesky/run_N/resources, .../datums     PYON lists, only when there are any

PYON text is a string dataset with the attribute ``labpipe_encoding = "pyon"``;
``labpipe.protocol.pyon.decode`` gives the document back. A field whose values are not
a regular numeric array (strings, ragged shapes) is stored as PYON text too.
"""

from __future__ import annotations

from typing import Any

from event_model import (Datum, DocumentRouter, Event, EventDescriptor, Resource, RunStart,
                         RunStop)

__all__ = ["DocumentArchive"]


class _Stream:
    def __init__(self) -> None:
        self.descriptors: list[dict[str, Any]] = []
        self.seq_num: list[int] = []
        self.time: list[float] = []
        self.data: dict[str, list[Any]] = {}
        self.timestamps: dict[str, list[Any]] = {}


class _Run:
    def __init__(self, start: dict[str, Any]):
        self.start = start
        self.stop: dict[str, Any] | None = None
        self.streams: dict[str, _Stream] = {}
        self.resources: list[dict[str, Any]] = []
        self.datums: list[dict[str, Any]] = []


class DocumentArchive(DocumentRouter):
    """Keeps all documents and event data of the runs it sees (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[_Run] = []
        self._by_uid: dict[str, _Run] = {}
        self._descriptors: dict[str, tuple[_Run, str]] = {}

    def start(self, doc: RunStart) -> None:
        run = _Run(dict(doc))
        self.runs.append(run)
        self._by_uid[doc["uid"]] = run

    def descriptor(self, doc: EventDescriptor) -> None:
        run = self._by_uid.get(doc["run_start"])
        if run is None:
            return
        name = doc.get("name", "primary")
        stream = run.streams.setdefault(name, _Stream())
        stream.descriptors.append(dict(doc))
        for key in doc["data_keys"]:
            stream.data.setdefault(key, [])
            stream.timestamps.setdefault(key, [])
        self._descriptors[doc["uid"]] = (run, name)

    def event(self, doc: Event) -> Event:
        found = self._descriptors.get(doc["descriptor"])
        if found is None:
            return doc
        run, name = found
        stream = run.streams[name]
        stream.seq_num.append(doc["seq_num"])
        stream.time.append(doc["time"])
        for key, value in doc["data"].items():
            stream.data.setdefault(key, []).append(value)
        for key, value in doc.get("timestamps", {}).items():
            stream.timestamps.setdefault(key, []).append(value)
        return doc  # unchanged (DocumentRouter's event is declared to return one)

    def resource(self, doc: Resource) -> None:
        run_start = doc.get("run_start")  # optional in a resource
        run = None if run_start is None else self._by_uid.get(run_start)
        if run is not None:
            run.resources.append(dict(doc))

    def datum(self, doc: Datum) -> Datum:
        if self.runs:
            self.runs[-1].datums.append(dict(doc))
        return doc  # unchanged (DocumentRouter's datum is declared to return one)

    def stop(self, doc: RunStop) -> None:
        run = self._by_uid.get(doc["run_start"])
        if run is not None:
            run.stop = dict(doc)

    def groups(self) -> dict[str, Any]:
        """The ``bluesky/`` group of the results file: {key: value}, keys with ``/``."""
        items: dict[str, Any] = {}
        for n, run in enumerate(self.runs):
            prefix = f"run_{n}"
            items[f"{prefix}/uid"] = run.start["uid"]
            items[f"{prefix}/start"] = run.start
            if run.stop is not None:
                items[f"{prefix}/stop"] = run.stop
            if run.resources:
                items[f"{prefix}/resources"] = run.resources
            if run.datums:
                items[f"{prefix}/datums"] = run.datums
            for name, stream in run.streams.items():
                base = f"{prefix}/{name}"
                items[f"{base}/descriptors"] = stream.descriptors
                items[f"{base}/seq_num"] = list(stream.seq_num)
                items[f"{base}/time"] = list(stream.time)
                for key, values in stream.data.items():
                    items[f"{base}/data/{key}"] = list(values)
                for key, values in stream.timestamps.items():
                    items[f"{base}/timestamps/{key}"] = list(values)
        return items
