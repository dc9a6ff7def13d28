"""One master per lab directory: an exclusive lock on ``.labpipe.lock``.

``LabLock(lab_dir).acquire()`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file
before the master touches any state; the kernel drops it when the process ends, however
it ends, so a crashed master never leaves the lab locked. When another process holds it,
``LabBusy`` says which (its PID and ports, read from the file). ``describe(bind, ports)``
writes the holder's PID, addresses and ports into the locked file (in place: the file
must stay the locked one; a half-written content only makes the message less precise).
``release()`` unlocks.
"""

from __future__ import annotations

import fcntl
import os

from labpipe.protocol import pyon

__all__ = ["LabLock", "LabBusy", "LOCK_NAME"]

LOCK_NAME = ".labpipe.lock"


class LabBusy(RuntimeError):
    """Another master holds the lab directory."""


class LabLock:
    """The lock on one lab directory, held by at most one master."""

    def __init__(self, lab_dir: str):
        self.lab_dir = lab_dir
        self.path = os.path.join(lab_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise LabBusy naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LabBusy(f"the lab directory {os.path.abspath(self.lab_dir)} is in use "
                          f"by another labpipe-master ({holder}); stop it first, or start "
                          "this one in another lab directory") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.describe([], {})

    def describe(self, bind: list[str], ports: dict[str, int]) -> None:
        """Write who holds the lock: this PID, its addresses and ports."""
        if self._fd is None:
            return
        text = pyon.encode({"pid": os.getpid(), "bind": list(bind), "ports": dict(ports)})
        data = (text + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock


def _holder(fd: int) -> str:
    """The holder as the lock file describes it, for the error message."""
    try:
        info = pyon.decode(os.pread(fd, 4096, 0).decode())
        pid = info["pid"]
        ports = info.get("ports") or {}
        bind = info.get("bind") or []
    except Exception:
        return "PID unknown: it has not described itself yet"
    text = f"PID {pid}"
    if bind:
        text += f" on {', '.join(map(str, bind))}"
    if ports:
        text += ", ports " + ", ".join(f"{name} {port}" for name, port in ports.items())
    return text
