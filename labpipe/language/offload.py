"""``@offload_analyze``: an experiment's ``analyze`` that runs on the lab's Dask cluster.

Marking ``analyze`` frees the pipeline's analyze stage as soon as the analysis is sent
to the cluster (``dask_scheduler`` in ``labpipe.toml``, ``docs/dask.md``); the run's
results file is written when the cluster's result comes back, with what the analysis
set (``set_dataset``, ``mutate_dataset``, ``append_to_dataset``) as if it had run in
the worker. On the cluster ``self`` is a copy of the experiment without its devices:
its arguments, its attributes and the datasets the run set or read are there; a device
(or the ``scheduler``/``ccb``) used there raises one clear error.

This module only marks the method: the worker (``labpipe.worker.remote_analyze``)
decides what to do with a marked one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["offload_analyze", "is_offloaded"]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``@offload_analyze`` sets on the function it marks.
MARK = "_labpipe_offload_analyze"


def offload_analyze(method: F) -> F:
    """Mark an experiment's ``analyze`` to run on the lab's Dask cluster."""
    if not callable(method):
        raise TypeError(f"@offload_analyze marks a method, not a {type(method).__name__}")
    setattr(method, MARK, True)
    return method


def is_offloaded(method: object) -> bool:
    """Whether method (a bound or plain function) was marked by ``@offload_analyze``."""
    function = getattr(method, "__func__", method)
    return bool(getattr(function, MARK, False))
