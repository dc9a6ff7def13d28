"""Atomic files: a reader sees the old content or the new, never a mix, never nothing.

``with atomic_path(path) as tmp:`` gives a temporary path in the same folder; write the
file there (by any means: text, h5py, ...). On leaving the block the file is fsynced,
renamed over ``path`` and the folder fsynced, so the new content survives a crash once
the block is left. If the block raises, the temporary file is removed and ``path`` is
untouched.

``atomic_path(path, fsync=False)`` skips both fsyncs: still atomic for readers (the
rename), but after a power loss ``path`` may hold older content (or, on some file
systems, none). For a file whose durability is ensured by some other write.
"""

import contextlib
import itertools
import os
from collections.abc import Iterator

__all__ = ["atomic_path", "fsync_path"]

_counter = itertools.count()


def fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file or a folder by its path."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temporary(folder: str, suffix: str) -> str:
    """Create an empty file ``.PID.N<suffix>`` in folder, readable and writable by its
    owner only (as ``tempfile.mkstemp`` does), and return its path. The process id and
    a counter make the name unique among the processes and threads writing there;
    ``O_EXCL`` refuses a name that exists (left over by an earlier process of the same
    id, say), and the next one is tried. Cheaper than ``mkstemp`` in a freshly forked
    worker: no random generator to seed and run."""
    pid = os.getpid()
    for _ in range(10000):  # tempfile.TMP_MAX
        tmp = os.path.join(folder, f".{pid}.{next(_counter)}{suffix}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name in {folder}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp",
                fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path`` that replaces it atomically on success
    (file and folder fsynced unless ``fsync`` is false)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # one stat when it exists: makedirs raises and catches
        os.makedirs(folder, exist_ok=True)
    tmp = _create_temporary(folder, suffix)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_path(folder, directory=True)
