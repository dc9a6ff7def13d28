"""The virtual devices every experiment can request: ``scheduler`` and ``ccb``.

``Scheduler`` forwards to the master's scheduler over the worker pipe; ``LocalScheduler``
is the stand-in used by ``labpipe-run`` (no master: it never pauses, submissions are
printed, an offloaded function runs at once in the process). ``offload`` sends a
function to the lab's Dask cluster (``offload.py``). ``CCB`` issues client control broadcasts (``ccb`` channel).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labpipe.language.exceptions import TerminationRequested
from labpipe.worker.messages import (CCBIssue, CheckPause, CheckTermination, Delete,
                                     GetStatus, Paused, RequestTermination, Resume,
                                     SetProgress, Submit, tag_of)
from labpipe.worker.offload import LocalOffloader, Offloaded, Offloader

if TYPE_CHECKING:
    from labpipe.worker.ipc import ChildChannel

__all__ = ["Scheduler", "LocalScheduler", "CCB", "LocalCCB"]

logger = logging.getLogger(__name__)


class Scheduler:
    """The ``scheduler`` device of a run under the master.

    Attributes ``rid``, ``pipeline_name``, ``priority`` and ``expid`` describe the
    current run.
    """

    def __init__(self, channel: ChildChannel, rid: int, pipeline_name: str, priority: int,
                 expid: dict[str, Any], offloader: Offloader | None = None) -> None:
        self._channel = channel
        self._offloader = offloader
        self.rid = rid
        self.pipeline_name = pipeline_name
        self.priority = priority
        self.expid = expid

    def pause(self) -> None:
        """Yield to prepared runs of higher precedence, then return.

        Raises TerminationRequested when termination of this run was requested.
        """
        self._channel.send(Paused())
        command = self._channel.recv_command()
        if not isinstance(command, Resume):
            raise RuntimeError(f"unexpected command while paused: {tag_of(command)}")
        if command.terminate:
            raise TerminationRequested

    def check_pause(self, rid: int | None = None) -> bool:
        """Whether pause() would not return at once (a higher run waits, or termination)."""
        return self._channel.request(CheckPause(self.rid if rid is None else rid))

    def check_termination(self, rid: int | None = None) -> bool:
        """Whether termination of this run (or of rid) was requested."""
        return self._channel.request(CheckTermination(self.rid if rid is None else rid))

    def submit(self, pipeline_name: str | None = None, expid: dict[str, Any] | None = None,
               priority: int | None = None, due_date: float | None = None,
               flush: bool = False) -> int:
        """Submit a run; pipeline, expid and priority default to the current run's."""
        return self._channel.request(Submit(
            self.pipeline_name if pipeline_name is None else pipeline_name,
            self.expid if expid is None else expid,
            self.priority if priority is None else priority, due_date, flush))

    def delete(self, rid: int) -> None:
        """Delete a run (in any stage)."""
        self._channel.request(Delete(rid))

    def request_termination(self, rid: int) -> None:
        """Ask a run to terminate gracefully (deletes it unless it is running)."""
        self._channel.request(RequestTermination(rid))

    def get_status(self) -> dict[int, dict[str, Any]]:
        """The schedule, as the ``schedule`` notifier holds it."""
        return self._channel.request(GetStatus())

    def set_progress(self, done: float, total: float | None = None,
                     message: object = "") -> None:
        """Report this run's progress: ``done`` out of ``total`` steps, and a message."""
        self._channel.send(SetProgress(done, total, str(message), time.time()))

    def offload(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Offloaded:
        """Run ``fn(*args, **kwargs)`` on the lab's Dask cluster; returns its pending
        result (``.result()``, or give it to ``set_dataset``). ``OffloadError`` when
        the lab has no cluster or it cannot be reached."""
        if self._offloader is None:
            raise RuntimeError("offload() is not available in this process")
        return self._offloader.submit(fn, *args, **kwargs)


class LocalScheduler:
    """The ``scheduler`` device when there is no master (``labpipe-run``)."""

    def __init__(self, rid: int | None = 0, pipeline_name: str = "main", priority: int = 0,
                 expid: dict[str, Any] | None = None) -> None:
        self.rid = rid
        self.pipeline_name = pipeline_name
        self.priority = priority
        self.expid = expid or {}

    def pause(self) -> None:
        pass

    def check_pause(self, rid: int | None = None) -> bool:
        return False

    def check_termination(self, rid: int | None = None) -> bool:
        return False

    def submit(self, pipeline_name: str | None = None, expid: dict[str, Any] | None = None,
               priority: int | None = None, due_date: float | None = None,
               flush: bool = False) -> None:
        logger.info("no master: would submit %r to pipeline %s", expid, pipeline_name)
        return None

    def delete(self, rid: int) -> None:
        logger.info("no master: would delete RID %s", rid)

    def request_termination(self, rid: int) -> None:
        logger.info("no master: would request termination of RID %s", rid)

    def get_status(self) -> dict[int, dict[str, Any]]:
        return {}

    def set_progress(self, done: float, total: float | None = None,
                     message: object = "") -> None:
        logger.info("progress: %s/%s %s", done, total, message)

    def offload(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Offloaded:
        """No master, no cluster: ``fn`` runs here and now; its result, as offload's."""
        return LocalOffloader().submit(fn, *args, **kwargs)


class CCB:
    """Client control broadcasts: ``issue(service, *args, **kwargs)``."""

    def __init__(self, channel: ChildChannel) -> None:
        self._channel = channel

    def issue(self, service: str, *args: Any, **kwargs: Any) -> None:
        """Broadcast a request to the clients (e.g. ``create_applet``) on ``ccb``."""
        self._channel.send(CCBIssue(service, list(args), kwargs))


class LocalCCB:
    """``ccb`` without a master: logs what would be broadcast."""

    def issue(self, service: str, *args: Any, **kwargs: Any) -> None:
        logger.info("CCB %s %r %r", service, args, kwargs)
