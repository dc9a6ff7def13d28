"""Path rules shared by the backends, the scanner and the RPC target.

- Repository paths are relative to the repository root, ``/``-separated, normalised
  (no ``.`` or ``..`` parts) and never absolute: ``repo_path`` enforces it, so that no
  request can name a file outside the repository or its checkout.
- A path is hidden when one of its parts starts with ``.``; hidden files and folders
  are never scanned.
- ``is_within(path, folder)`` compares real paths (symbolic links resolved), so a link
  inside an allowed folder that points elsewhere is outside.
"""

from __future__ import annotations

import os
import posixpath

__all__ = ["repo_path", "is_hidden", "is_within", "in_subdir"]


def repo_path(path: str) -> str:
    """Normalise a path relative to the repository root; ValueError if it escapes it."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"invalid repository path {path!r}: expected a file path "
                         "relative to the repository root")
    text = path.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"repository path {path!r} is absolute: give it relative to "
                         "the repository root")
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"repository path {path!r} points outside the repository")
    return normal


def is_hidden(path: str) -> bool:
    """Whether a part of the relative path starts with ``.``."""
    return any(part.startswith(".") for part in path.split("/") if part not in ("", "."))


def in_subdir(path: str, subdir: str) -> bool:
    """Whether the repository path lies in ``subdir`` ("" is the whole repository)."""
    return not subdir or path.startswith(subdir.rstrip("/") + "/")


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it, once symbolic links are resolved."""
    real = os.path.realpath(path)
    base = os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)
