"""The virtual devices every experiment can request: ``scheduler`` and ``ccb``.

``Scheduler`` forwards to the master's scheduler over the worker pipe; ``LocalScheduler``
is the stand-in used by ``labpipe-run`` (no master: it never pauses, submissions are
printed). ``CCB`` issues client control broadcasts (``ccb`` channel).
"""

import logging
import time

from labpipe.language.exceptions import TerminationRequested

__all__ = ["Scheduler", "LocalScheduler", "CCB", "LocalCCB"]

logger = logging.getLogger(__name__)


class Scheduler:
    """The ``scheduler`` device of a run under the master.

    Attributes ``rid``, ``pipeline_name``, ``priority`` and ``expid`` describe the
    current run.
    """

    def __init__(self, channel, rid, pipeline_name, priority, expid):
        self._channel = channel
        self.rid = rid
        self.pipeline_name = pipeline_name
        self.priority = priority
        self.expid = expid

    def pause(self):
        """Yield to prepared runs of higher precedence, then return.

        Raises TerminationRequested when termination of this run was requested.
        """
        self._channel.send({"action": "paused"})
        reply = self._channel.recv_command()
        if reply.get("action") != "resume":
            raise RuntimeError(f"unexpected command while paused: {reply.get('action')}")
        if reply.get("terminate"):
            raise TerminationRequested

    def check_pause(self, rid=None) -> bool:
        """Whether pause() would not return at once (a higher run waits, or termination)."""
        return self._channel.request("check_pause", rid=self.rid if rid is None else rid)

    def check_termination(self, rid=None) -> bool:
        """Whether termination of this run (or of rid) was requested."""
        return self._channel.request("check_termination",
                                     rid=self.rid if rid is None else rid)

    def submit(self, pipeline_name=None, expid=None, priority=None, due_date=None,
               flush=False):
        """Submit a run; pipeline, expid and priority default to the current run's."""
        return self._channel.request(
            "submit",
            pipeline_name=self.pipeline_name if pipeline_name is None else pipeline_name,
            expid=self.expid if expid is None else expid,
            priority=self.priority if priority is None else priority,
            due_date=due_date, flush=flush)

    def delete(self, rid):
        """Delete a run (in any stage)."""
        return self._channel.request("delete", rid=rid)

    def request_termination(self, rid):
        """Ask a run to terminate gracefully (deletes it unless it is running)."""
        return self._channel.request("request_termination", rid=rid)

    def get_status(self) -> dict:
        """The schedule, as the ``schedule`` notifier holds it."""
        return self._channel.request("get_status")

    def set_progress(self, done, total=None, message=""):
        """Report this run's progress: ``done`` out of ``total`` steps, and a message."""
        self._channel.send({"action": "set_progress", "done": done, "total": total,
                            "message": str(message), "time": time.time()})


class LocalScheduler:
    """The ``scheduler`` device when there is no master (``labpipe-run``)."""

    def __init__(self, rid=0, pipeline_name="main", priority=0, expid=None):
        self.rid = rid
        self.pipeline_name = pipeline_name
        self.priority = priority
        self.expid = expid or {}

    def pause(self):
        pass

    def check_pause(self, rid=None):
        return False

    def check_termination(self, rid=None):
        return False

    def submit(self, pipeline_name=None, expid=None, priority=None, due_date=None,
               flush=False):
        logger.info("no master: would submit %r to pipeline %s", expid, pipeline_name)
        return None

    def delete(self, rid):
        logger.info("no master: would delete RID %s", rid)

    def request_termination(self, rid):
        logger.info("no master: would request termination of RID %s", rid)

    def get_status(self):
        return {}

    def set_progress(self, done, total=None, message=""):
        logger.info("progress: %s/%s %s", done, total, message)


class CCB:
    """Client control broadcasts: ``issue(service, *args, **kwargs)``."""

    def __init__(self, channel):
        self._channel = channel

    def issue(self, service, *args, **kwargs):
        """Broadcast a request to the clients (e.g. ``create_applet``) on ``ccb``."""
        self._channel.send({"action": "ccb_issue", "service": service,
                            "args": list(args), "kwargs": kwargs})


class LocalCCB:
    """``ccb`` without a master: logs what would be broadcast."""

    def issue(self, service, *args, **kwargs):
        logger.info("CCB %s %r %r", service, args, kwargs)
