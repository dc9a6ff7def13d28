"""The filesystem backend: experiments are the files of a plain folder.

There are no revisions: the current (and only) revision is ``"N/A"`` (as in ARTIQ), and
``request_rev`` hands out the folder itself. Content ids are Git blob ids computed from
the file's bytes, so the same content has the same id on the filesystem and in Git.

Listing is cheap when nothing changed: a file's id is cached with the key
``(st_mtime_ns, st_size, st_ino)`` and the file is re-read only when that key changes.
A cache entry is trusted only when the file's mtime is older than the moment it was
hashed by more than ``racy_margin`` seconds (Git's "racy clean" rule): a file written
in the same clock tick as it was read, then written again with the same size, would
otherwise keep a stale id. Such fresh files are simply re-hashed at the next listing.

Symbolic links to files are followed; symbolic links to folders are not (no loops).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator

from labpipe.master.repository.backend import NO_REVISION, Revision
from labpipe.master.repository.paths import repo_path

__all__ = ["FilesystemBackend", "blob_id"]


def blob_id(data: bytes) -> str:
    """The Git blob id (hex SHA-1) of ``data``."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


class FilesystemBackend:
    """Experiments read straight from the folder ``root``; revision ``"N/A"``."""

    instant = True  # resolve, exists, request_rev: a stat at most

    def __init__(self, root: str, *, racy_margin: float = 2.0):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"experiment repository folder {self.root} does not exist: create it "
                "or give another folder with -r")
        self._racy_margin_ns = int(racy_margin * 1e9)
        self._lock = threading.Lock()
        # path -> (stat key, content id, time the content was read in ns)
        self._ids: dict[str, tuple[tuple[int, int, int], str, int]] = {}
        #: How many files were read and hashed so far (tests and benchmarks read it).
        self.hashed = 0

    def get_cur_rev(self) -> str:
        """Always ``"N/A"``: a plain folder has no revisions."""
        return NO_REVISION

    def resolve(self, rev: str | None) -> str:
        """``"N/A"`` for None or ``"N/A"``; LookupError for any other revision."""
        if rev is None or rev == NO_REVISION:
            return NO_REVISION
        raise LookupError(
            f"unknown revision {rev!r}: the experiment repository {self.root} is a plain "
            "folder without revisions (start the master with -g to use Git)")

    def get_message(self, rev: str) -> str | None:
        """None: there are no commit messages."""
        self.resolve(rev)
        return None

    def exists(self, path: str, rev: str = NO_REVISION) -> bool:
        """Whether ``path`` (relative to the root) is a file of the folder."""
        self.resolve(rev)
        return os.path.isfile(os.path.join(self.root, repo_path(path)))

    def request_rev(self, rev: str | None) -> Revision:
        """The folder itself; nothing to hold."""
        self.resolve(rev)
        return Revision(self.root, NO_REVISION, "")

    def release_rev(self, rev: str) -> None:
        """Nothing to release."""
        self.resolve(rev)

    def list_files(self, subdir: str = "", rev: str | None = None) -> dict[str, str]:
        """``{path: content id}`` of the ``.py`` files under ``subdir``, hidden ones skipped."""
        self.resolve(rev)
        top = "" if subdir in ("", ".") else repo_path(subdir)
        with self._lock:
            found: dict[str, str] = {}
            for path, entry in self._walk(top):
                try:
                    content_id = self._content_id(path, entry)
                except OSError:
                    continue  # vanished or unreadable since the directory was read
                found[path] = content_id
            prefix = top + "/" if top else ""
            for path in [p for p in self._ids if p.startswith(prefix) and p not in found]:
                del self._ids[path]
            return found

    def close(self) -> None:
        """Forget the cached content ids."""
        with self._lock:
            self._ids.clear()

    def _walk(self, top: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                entries = os.scandir(os.path.join(self.root, folder))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    path = f"{folder}/{entry.name}" if folder else entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(path)
                        elif entry.name.endswith(".py") and entry.is_file():
                            yield path, entry
                    except OSError:
                        continue

    def _content_id(self, path: str, entry: os.DirEntry) -> str:
        st = entry.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._ids.get(path)
        if cached is not None and cached[0] == key \
                and key[0] < cached[2] - self._racy_margin_ns:
            return cached[1]
        read_at = time.time_ns()
        with open(entry.path, "rb") as f:
            content_id = blob_id(f.read())
        self.hashed += 1
        self._ids[path] = (key, content_id, read_at)
        return content_id
