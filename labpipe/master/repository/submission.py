"""Checking an expid at submission, so that a bad one is refused at once.

The three submission modes of ``wire-compat.md``:

- ``repo_rev`` present: the experiment comes from the repository. ``repo_rev`` (None:
  the revision of the last scan, the one clients see in ``explist_status``; or a commit
  id, branch, tag or short id) is resolved to a full commit id (``"N/A"`` on the
  filesystem backend) that replaces it in the expid, so the run and its results record
  exactly what ran. ``file`` is relative to the repository root and must be a file of
  that revision.
- ``file`` without ``repo_rev``: a path on the master's filesystem, relative to the lab
  directory (or absolute); it must be a file.
- ``content``: the source text itself; it must be a string (that it compiles is
  checked by the experiment database in an examining process, with a time and memory
  limit: never in the master's process).

``resolve_submission`` makes these checks (no process, no import, no compile); the
experiment database then checks the class (``check_class``) from its last scan or by
examining the file in a worker. ``check_file_allowed`` applies ``labpipe.toml``'s
``[security]`` folders to raw files. Every refusal is a ``SubmissionError`` with a
one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from labpipe.config import SecurityConfig
from labpipe.master.repository.backend import NO_REVISION, RepositoryBackend
from labpipe.master.repository.examiner import Examined
from labpipe.master.repository.paths import repo_path

__all__ = ["SubmissionError", "FileNotAllowedError", "Source", "resolve_submission",
           "check_class", "check_file_allowed", "allowed_folders"]


class SubmissionError(ValueError):
    """An expid that cannot run; the message says why, on one line."""


class FileNotAllowedError(SubmissionError, PermissionError):
    """A raw file outside the folders ``labpipe.toml`` allows."""


def allowed_folders(lab_dir: str, repository: str, security: SecurityConfig) -> list[str]:
    """The real paths of the folders raw files may be in (``[security]``)."""
    folders = [lab_dir, repository] + [
        f if os.path.isabs(f) else os.path.join(lab_dir, f) for f in security.file_folders]
    return [os.path.realpath(f) for f in folders]


def check_file_allowed(path: str, folders: list[str], security: SecurityConfig,
                       shown: str | None = None) -> None:
    """``FileNotAllowedError`` naming the file and the rule when ``path`` (symbolic
    links resolved) is outside ``folders``, unless ``allow_files_anywhere``."""
    if security.allow_files_anywhere:
        return
    real = os.path.realpath(path)
    if any(os.path.commonpath([real, folder]) == folder for folder in folders):
        return
    raise FileNotAllowedError(
        f"file {shown or path!r} is outside the folders labpipe.toml allows for raw "
        f"files ({', '.join(folders)}): [security] allow_files_anywhere = true or "
        "file_folders would allow it")


@dataclass(frozen=True)
class Source:
    """Where the experiment of a checked expid is, for the class check."""

    kind: str
    """``"repository"``, ``"file"`` or ``"content"``."""
    path: str | None = None
    """Repository path (``repository``) or absolute path (``file``)."""
    rev: str | None = None
    """Full commit id or ``"N/A"`` (``repository`` only)."""


def _short(rev: str) -> str:
    return rev if rev == NO_REVISION else rev[:12]


def resolve_submission(expid: dict, backend: RepositoryBackend, lab_dir: str,
                       cur_rev: str = NO_REVISION) -> tuple[dict, Source]:
    """``(resolved expid, source)``; SubmissionError when the expid cannot run.

    ``cur_rev`` is the revision of the last scan, used when ``repo_rev`` is None. The
    resolved expid is a copy: ``repo_rev`` is a full commit id, a repository ``file`` is
    normalised.
    """
    if not isinstance(expid, dict):
        raise SubmissionError(f"expid must be a dict, not {type(expid).__name__}")
    class_name = expid.get("class_name")
    if class_name is not None and not isinstance(class_name, str):
        raise SubmissionError(f"expid class_name must be a string or None, not {class_name!r}")
    if expid.get("content") is not None:
        content = expid["content"]
        if not isinstance(content, str):
            raise SubmissionError("expid content must be the source text (a string)")
        return dict(expid), Source("content")
    file = expid.get("file")
    if not isinstance(file, str) or not file:
        raise SubmissionError("expid needs a file (a path) or content (the source text)")
    if "repo_rev" in expid:
        return _from_repository(expid, file, backend, cur_rev)
    path = file if os.path.isabs(file) else os.path.join(lab_dir, file)
    if not os.path.isfile(path):
        raise SubmissionError(
            f"experiment file {file!r} not found: without repo_rev (-R) a file is a path "
            f"on the master, relative to its lab directory {lab_dir}; use -R for the "
            "repository, or --content to send the file")
    return dict(expid), Source("file", os.path.abspath(path))


def _from_repository(expid: dict, file: str, backend: RepositoryBackend,
                     cur_rev: str) -> tuple[dict, Source]:
    requested = expid["repo_rev"]
    if requested is not None and not isinstance(requested, str):
        raise SubmissionError(f"expid repo_rev must be a string or None, not {requested!r}")
    wanted = requested if requested is not None else (
        cur_rev if cur_rev != NO_REVISION else None)
    try:
        rev = backend.resolve(wanted)
        path = repo_path(file)
    except (LookupError, ValueError) as exc:
        raise SubmissionError(str(exc)) from None
    if not backend.exists(path, rev):
        where = ("the repository folder " + backend.root if rev == NO_REVISION
                 else f"the repository at revision {_short(rev)}")
        raise SubmissionError(f"experiment file {path!r} does not exist in {where}")
    resolved = dict(expid, file=path, repo_rev=rev)
    return resolved, Source("repository", path, rev)


def check_class(examined: Examined, class_name: str | None, file: str) -> None:
    """SubmissionError unless the examined file holds the class (or exactly one if None)."""
    if not examined.ok:
        raise SubmissionError(f"{file} cannot be imported: {examined.error}")
    found = list(examined.description or {})
    if class_name is None:
        if len(found) == 1:
            return
        if not found:
            raise SubmissionError(f"{file} holds no experiment class")
        raise SubmissionError(f"{file} holds several experiments ({', '.join(found)}): "
                              "give the class name")
    if class_name not in found:
        listed = f"experiments in it: {', '.join(found)}" if found else "it holds no experiment"
        raise SubmissionError(f"{file} has no experiment class {class_name!r} ({listed})")
