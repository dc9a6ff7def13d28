"""The repository backend Protocol: what the experiment database needs from a store.

Two backends implement it: ``FilesystemBackend`` (a plain folder, no revisions) and
``GitBackend`` (committed content of a Git repository, read with dulwich). The
experiment database, the scanner and the scheduler use only the methods below, so a
backend can be swapped without touching them.

Contract:

- Revisions are strings. ``resolve(rev)`` turns what a user typed (None for "the
  current one", a commit id, a branch or tag name, a short hex prefix) into the
  canonical revision (a full commit id; ``"N/A"`` on the filesystem), or raises
  ``LookupError`` with a one-line message naming ``rev``.
- ``request_rev(rev)`` makes the files of a canonical revision available in a folder and
  returns ``Revision(workdir, commit, message)``; every call must be balanced by one
  ``release_rev(commit)``. The folder stays until the last holder releases it, so runs
  of several revisions can run at once.
- ``list_files(subdir, rev)`` lists the ``.py`` files under ``subdir`` (relative to the
  repository root, ``/``-separated) with a content id that changes whenever the
  content does; hidden files and folders (names starting with ``.``) are skipped.
- Methods are thread-safe: the experiment database calls them from worker threads so
  that a slow checkout never blocks the event loop.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Revision", "RepositoryBackend", "HookableBackend", "EmptyRepositoryError",
           "NO_REVISION"]

#: The revision of a store without revisions (the filesystem backend), as ARTIQ shows it.
NO_REVISION = "N/A"


class Revision(NamedTuple):
    """A revision made available on disk by ``request_rev``."""

    workdir: str
    """Absolute path of the folder holding the revision's files."""
    commit: str
    """The canonical revision (full commit id, or ``"N/A"``); pass it to ``release_rev``."""
    message: str
    """The commit message (empty on the filesystem)."""


class EmptyRepositoryError(LookupError):
    """The repository has no commit yet, so there is no current revision."""


@runtime_checkable
class RepositoryBackend(Protocol):
    """Where experiment files come from: a plain folder or a Git repository."""

    #: Absolute path of the repository (the folder, or the Git repository's path).
    root: str
    #: Whether its methods only look at the file system (a stat or two: cheaper on the
    #: event loop than a hop to a thread) rather than read objects or check out.
    instant: bool

    def get_cur_rev(self) -> str:
        """The current revision: the commit HEAD points to, ``"N/A"`` without one."""
        ...

    def resolve(self, rev: str | None) -> str:
        """The canonical revision for ``rev`` (None: the current one); LookupError if unknown."""
        ...

    def get_message(self, rev: str) -> str | None:
        """The message of a canonical revision (None on the filesystem)."""
        ...

    def exists(self, path: str, rev: str) -> bool:
        """Whether ``path`` (relative to the root) is a file in revision ``rev``."""
        ...

    def request_rev(self, rev: str | None) -> Revision:
        """Make revision ``rev`` available on disk and hold it; see the module docstring."""
        ...

    def release_rev(self, rev: str) -> None:
        """Release one hold on ``rev`` (the ``commit`` that ``request_rev`` returned)."""
        ...

    def list_files(self, subdir: str = "", rev: str | None = None) -> dict[str, str]:
        """``{relative path: content id}`` for the ``.py`` files under ``subdir``."""
        ...

    def close(self) -> None:
        """Release every resource (temporary checkouts included)."""
        ...


@runtime_checkable
class HookableBackend(RepositoryBackend, Protocol):
    """A backend whose repository can run a rescan hook (``GitBackend``; ``hooks.py``)."""

    #: Whether the repository is bare (a push runs the hook) or not (a commit does).
    bare: bool

    def hooks_dir(self) -> tuple[str, bool]:
        """``(folder where Git looks for hooks, whether core.hooksPath chose it)``."""
        ...
