"""The experiment repository: backends, scanning, the ``experiment_db`` target, hooks.

Modules (one idea each):

- ``backend``: the ``RepositoryBackend`` Protocol and ``Revision``;
- ``filesystem``, ``git``: ``FilesystemBackend(root)``, ``GitBackend(path)`` (dulwich);
- ``examiner`` / ``examine_child``: the pool of processes examining files (parent side /
  child side);
- ``scan``: the pure decisions of a scan (what to re-examine, the explist names);
- ``publish``: a new dict published through a Notifier as the fewest mods;
- ``db``: ``ExperimentDB``, owner of the ``explist``, ``explist_status`` and
  ``explist_errors`` notifiers, and its RPC target;
- ``submission``: checking an expid at submission;
- ``hooks`` / ``notify``: the Git hook that makes a push rescan, and the command it runs.

The names below are imported lazily, so that a worker process importing
``examine_child`` does not load dulwich and the master's machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExperimentDB", "ExperimentDBTarget", "ScanReport", "ExamineError",
           "FilesystemBackend", "GitBackend", "RepositoryBackend", "Revision",
           "EmptyRepositoryError", "SubmissionError", "NO_REVISION"]

_HOMES = {
    "ExperimentDB": "db", "ExperimentDBTarget": "db", "ScanReport": "db",
    "ExamineError": "db", "FilesystemBackend": "filesystem", "GitBackend": "git",
    "RepositoryBackend": "backend", "Revision": "backend",
    "EmptyRepositoryError": "backend", "NO_REVISION": "backend",
    "SubmissionError": "submission",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
