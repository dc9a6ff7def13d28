"""The records of function calls on disk: one PYON file per task, the newest kept.

A record is a dict (``functions.TaskRecord.as_dict``) stored as ``TASK.pyon`` in the
store's folder, written atomically and fsynced (``pyon.store_file``) before the call's
result is reported. At most ``keep`` records stay: writing one more removes the oldest
(by the order written, known from the files' modification times at start). Task ids
are uuid4 strings: anything else is never turned into a file name.

A record written while its call ran (``status`` ``"running"``: a background call) and
found so at start is from a master that stopped meanwhile: ``load`` rewrites it as
failed, saying so. Methods block (file I/O): call them in a thread.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from typing import Any

from labpipe.protocol import pyon

__all__ = ["TaskStore", "is_task_id", "DEFAULT_KEEP"]

logger = logging.getLogger(__name__)

#: How many records a store keeps by default.
DEFAULT_KEEP = 1000

_TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SUFFIX = ".pyon"


def is_task_id(task: object) -> bool:
    """Whether task has the shape of a task id (a lower-case uuid4 string)."""
    return isinstance(task, str) and _TASK_ID.fullmatch(task) is not None


class TaskStore:
    """Records of function calls in ``folder`` (made if missing); see the module
    docstring."""

    def __init__(self, folder: str, keep: int = DEFAULT_KEEP):
        self.folder = folder
        self.keep = keep
        self._order: collections.deque[str] = collections.deque()

    def _path(self, task: str) -> str:
        if not is_task_id(task):
            raise ValueError(f"{task!r} is not a task id")
        return os.path.join(self.folder, task + _SUFFIX)

    def load(self) -> int:
        """Index the stored records (oldest first), end the ones left running, drop
        the oldest beyond ``keep``. Returns how many records there are."""
        found = []
        if not os.path.isdir(self.folder):
            return 0  # made by the first write
        for entry in os.scandir(self.folder):
            task = entry.name[:-len(_SUFFIX)]
            if entry.name.endswith(_SUFFIX) and is_task_id(task):
                try:
                    found.append((entry.stat().st_mtime_ns, task))
                except OSError:
                    continue
        self._order = collections.deque(task for _, task in sorted(found))
        for task in list(self._order):
            record = self.read(task)
            if record is not None and record.get("status") != "completed":
                record.update(status="completed", success=False,
                              msg="the master stopped while the function ran")
                pyon.store_file(self._path(task), record)
        self._prune()
        return len(self._order)

    def write(self, record: dict[str, Any]) -> None:
        """Store record (its ``task`` names it) durably; the oldest beyond ``keep`` go."""
        task = record["task"]
        os.makedirs(self.folder, exist_ok=True)
        pyon.store_file(self._path(task), record)
        if task in self._order:
            self._order.remove(task)
        self._order.append(task)
        self._prune()

    def read(self, task: str) -> dict[str, Any] | None:
        """The record of task, or None (no such record, or not a task id)."""
        if not is_task_id(task):
            return None
        try:
            record = pyon.load_file(self._path(task))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.error("task %s: its record cannot be read: %s", task, exc)
            return None
        return record if isinstance(record, dict) else None

    def _prune(self) -> None:
        while len(self._order) > self.keep:
            task = self._order.popleft()
            try:
                os.unlink(self._path(task))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("task %s: its old record cannot be removed: %s", task, exc)

    def __len__(self) -> int:
        return len(self._order)
