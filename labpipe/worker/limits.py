"""Memory limits for processes that import or compile user code.

``memory_limit(baseline, extra)`` is a context manager setting the soft ``RLIMIT_AS``
to ``baseline + extra`` bytes for its duration (then back: an unprivileged process may
raise its soft limit again up to the unchanged hard limit); ``mapped_bytes()`` is the
process's address space now, the baseline a forked worker measures when it starts (the
template's mappings are already there). Python code that needs more than the limit
gets ``MemoryError``; the caller turns it into a one-line reason. ``extra`` None sets
no limit.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Iterator

__all__ = ["mapped_bytes", "memory_limit", "set_memory_limit", "DEFAULT_VALIDATE_MEMORY"]

#: Address space a validation (``schedule.validate``'s dry run) may add.
DEFAULT_VALIDATE_MEMORY = 2 << 30


def mapped_bytes() -> int:
    """The address space of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def set_memory_limit(baseline: int, extra: int) -> tuple[int, int]:
    """Set the soft RLIMIT_AS to ``baseline + extra`` (at most the hard limit) for the
    rest of the process; returns the previous ``(soft, hard)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = baseline + extra
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    return soft, hard


@contextlib.contextmanager
def memory_limit(baseline: int, extra: int | None) -> Iterator[None]:
    """RLIMIT_AS at ``baseline + extra`` while the block runs (see the docstring)."""
    if extra is None:
        yield
        return
    soft, hard = set_memory_limit(baseline, extra)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
