"""Process lifetimes: no process the master started outlives it.

Three means, used together (see ``docs/internals.md``):

- ``die_with_parent()``: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in a process forked by
  the worker template, so a worker or examiner dies when its template does. Linux sends
  it when the parent *thread* ends: safe in the template, which forks from its only
  thread, not in the master, whose templates are started from short-lived threads.
  There a watchdog pipe does the job (``forkserver``).
- ``own_group()``: each forked process leads its own process group, so that what an
  experiment started (and left behind) ends with its run: ``kill_group``.
- ``/proc`` facts (``start_time``, ``process_table``) that let a later master recognise
  a recorded group safely, never killing a recycled PID (``master/process_records``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import NamedTuple

__all__ = ["load_libc", "die_with_parent", "own_group", "kill_group", "start_time", "ProcInfo",
           "process_table"]

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def load_libc() -> ctypes.CDLL:
    """Load libc for ``die_with_parent`` now (the template does, once for all forks)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send ``signum`` to this process when its parent ends. If
    ``parent`` (the expected parent pid) is gone already, exit now: the signal would
    never come."""
    if load_libc().prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def own_group(pid: int = 0) -> None:
    """Make ``pid`` (0: this process) the leader of a new process group. Called by both
    parent and child after a fork, so that the group exists whichever runs first."""
    try:
        os.setpgid(pid, 0)
    except OSError:
        pass  # the child did it already, or has ended


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> bool:
    """Signal every process of group ``pgid``; False when the group is empty."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


class ProcInfo(NamedTuple):
    """What ``/proc/PID/stat`` says about one process."""
    pid: int
    pgid: int
    start: int  # clock ticks after boot
    state: str  # "Z" for a zombie (ended, not reaped yet)
    name: str


def _read_stat(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    head, _, rest = text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    try:
        return ProcInfo(pid, int(fields[2]), int(fields[19]), fields[0], name)
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot), None if it does not run."""
    info = _read_stat(pid)
    return None if info is None else info.start


def process_table() -> list[ProcInfo]:
    """Every process the system shows in ``/proc`` right now (zombies included)."""
    table = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _read_stat(int(entry))
            if info is not None:
                table.append(info)
    return table
