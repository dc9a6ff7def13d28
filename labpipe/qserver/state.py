"""What the queueserver endpoint keeps that labpipe has no place for, on disk.

``EndpointState(path)`` holds the ``history_clear`` mark (``history_get`` shows the
records after that RID: labpipe's history itself stays) and the ends clients asked of
runs (``re_stop``, ``re_abort``, ``re_halt``: history's ``exit_status`` stopped,
aborted, halted; the newest ``REMEMBERED``) in one PYON file, ``qserver.pyon`` in the
lab directory, written atomically and fsynced before the reply (``save``). A file that
cannot be read is logged and replaced: it only says how history is shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from labpipe.protocol import pyon

__all__ = ["EndpointState", "FILE_NAME", "REMEMBERED"]

logger = logging.getLogger(__name__)

FILE_NAME = "qserver.pyon"
#: how many runs' asked ends are kept
REMEMBERED = 10000


class EndpointState:
    """The history_clear mark and the asked ends (module docstring)."""

    def __init__(self, path: str | None):
        self.path = path
        self.history_from_rid = -1
        self.exit_status: dict[int, str] = {}
        if path is not None and os.path.exists(path):
            try:
                stored = pyon.load_file(path)
                mark, ends = stored["history_from_rid"], stored["exit_status"]
                if not isinstance(mark, int) or not isinstance(ends, dict):
                    raise ValueError("not an endpoint state")
                self.history_from_rid = mark
                self.exit_status = {int(rid): str(end) for rid, end in ends.items()}
            except Exception as exc:
                logger.error("%s cannot be read (%s): history is shown whole, ends "
                             "as labpipe recorded them", path, exc)

    def note_end(self, rid: int, exit_status: str) -> None:
        self.exit_status[rid] = exit_status
        while len(self.exit_status) > REMEMBERED:
            del self.exit_status[next(iter(self.exit_status))]

    async def save(self) -> None:
        """On disk (atomic, fsynced) when it returns; nothing with no path."""
        if self.path is None:
            return
        record: dict[str, Any] = {"history_from_rid": self.history_from_rid,
                                  "exit_status": dict(self.exit_status)}
        await asyncio.to_thread(pyon.store_file, self.path, record)
