"""A LiveTable-style line in the run's log for every event.

``LogTable()`` is a RunEngine callback logging, at INFO on the ``labpipe.bluesky.table``
logger (so a run submitted with log level INFO shows it), a header when a stream's
descriptor arrives and one line per event::

    primary | seq_num |         time |        det |      motor | motor_setpoint
    primary |       1 | 10:42:07.512 |      11.11 |         -3 |             -3

and a closing line with the run's exit status when its stop document arrives.
"""

from __future__ import annotations

import logging
import numbers
import time

from typing import Any

from event_model import DocumentRouter, Event, EventDescriptor, RunStop

__all__ = ["LogTable", "format_value"]

logger = logging.getLogger("labpipe.bluesky.table")


def format_value(value: Any, width: int = 10) -> str:
    """A table cell: numbers as ``%.4g``, anything else as a shortened repr."""
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, numbers.Number):
        text = f"{value:.4g}"
    else:
        text = repr(value)
        if len(text) > 24:
            text = text[:21] + "..."
    return text.rjust(width)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


class LogTable(DocumentRouter):
    """Logs a table line per event (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._columns: dict[str, tuple[str, list[str], list[int]]] = {}
        self._headed: set[str] = set()

    def descriptor(self, doc: EventDescriptor) -> None:
        name = doc.get("name", "primary")
        fields = sorted(doc["data_keys"])
        widths = [max(10, len(f)) for f in fields]
        self._columns[doc["uid"]] = (name, fields, widths)

    def event(self, doc: Event) -> Event:
        columns = self._columns.get(doc["descriptor"])
        if columns is None:
            return doc
        name, fields, widths = columns
        if doc["descriptor"] not in self._headed:  # header with the stream's first event
            self._headed.add(doc["descriptor"])
            header = " | ".join(f.rjust(w) for f, w in zip(fields, widths))
            logger.info("%s | seq_num |         time | %s", name, header)
        cells = " | ".join(format_value(doc["data"].get(f, ""), w)
                           for f, w in zip(fields, widths))
        logger.info("%s | %7d | %s | %s", name, doc["seq_num"], _clock(doc["time"]), cells)
        return doc  # unchanged (DocumentRouter's event is declared to return one)

    def stop(self, doc: RunStop) -> None:
        logger.info("run %s ended: %s%s", doc["run_start"][:8], doc.get("exit_status"),
                    f" ({doc['reason']})" if doc.get("reason") else "")
