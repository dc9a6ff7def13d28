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
import os
import tempfile

__all__ = ["atomic_path", "fsync_path"]


def fsync_path(path: str, directory: bool = False):
    """fsync a file or a folder by its path."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp", fsync: bool = True):
    """Yield a temporary path next to ``path`` that replaces it atomically on success
    (file and folder fsynced unless ``fsync`` is false)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=suffix)
    os.close(fd)
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
