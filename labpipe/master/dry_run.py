"""``schedule.validate(pipeline_name, expid)``: would this submission start?

Returns the list of problems (one line each), empty when the run would start. The
submission is checked as ``submit`` checks it (fields, file, class, repository
revision), then a fresh worker imports the experiment and builds it with its arguments
against the current device database (``labpipe.worker.validate``): missing file or
class, unknown argument, wrong type, out of range, unknown device. Nothing is run and
no RID is taken; the worker's logs, dataset writes and submissions are dropped, so a
dry run leaves no trace in the schedule, the datasets or the results.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labpipe.master.expid import validate_submission
from labpipe.master.repository.db import caller
from labpipe.worker import messages
from labpipe.worker.handle import Handlers, Worker, WorkerError, WorkerFailed

if TYPE_CHECKING:  # the scheduler imports this module: no import at run time
    from labpipe.master.scheduler import Scheduler

__all__ = ["validate_run"]

logger = logging.getLogger(__name__)


def _strip_rid(message: str) -> str:
    return message.split(": ", 1)[1] if message.startswith("RID ") else message


def _drop(msg: messages.Message) -> None:
    pass


def _handlers(scheduler: Scheduler) -> Handlers:
    """A dry run's table: the master's device database and datasets (read only, from
    ``worker_handlers(None)``; no device database: an empty one) and the dry run's own
    answers. What the worker streams is dropped; it cannot submit or delete runs."""
    services = scheduler.worker_handlers(None).only(messages.GetDeviceDB,
                                                    messages.GetDataset)
    own = (Handlers()
           .on(messages.Log, _drop)
           .on(messages.UpdateDataset, _drop)
           .on(messages.CCBIssue, _drop)
           .on(messages.SetProgress, _drop)
           .on(messages.FunctionOutcome, _drop)
           .on(messages.CheckPause, lambda m: False)
           .on(messages.CheckTermination, lambda m: False)
           .on(messages.GetStatus, lambda m: scheduler.get_status())
           .on(messages.Interactive, lambda m: None))  # cancelled: nobody is asked
    if messages.GetDeviceDB not in services:
        own.on(messages.GetDeviceDB, lambda m: {})
    return services.merged(own)


async def validate_run(scheduler: Scheduler, pipeline_name: str,
                       expid: dict[str, Any]) -> list[str]:
    """The problems of a submission; see the module docstring. Uses the scheduler's
    public surface only: its configuration, ``check_submission``, ``worker_handlers``,
    ``launcher`` and ``checkout_rev``/``release_rev``."""
    logger.info("validate(%r, file %r%s) called by %s", pipeline_name,
                expid.get("file") if isinstance(expid, dict) else None,
                ", with content" if isinstance(expid, dict) and "content" in expid else "",
                caller())
    try:
        validate_submission(pipeline_name, expid, 0, None, False)
    except (TypeError, ValueError) as e:
        return [str(e)]
    expid = dict(expid)
    if scheduler.check_submission is not None:
        try:
            # argument values are left to the worker, which reports all problems at once
            expid = await scheduler.check_submission(expid, check_arguments=False)
        except (LookupError, ValueError, TypeError, OSError) as e:
            return [str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__]
    workdir, repo_rev = scheduler.config.lab_dir, None
    try:
        if "repo_rev" in expid:
            try:
                workdir, repo_rev, _ = await scheduler.checkout_rev(expid["repo_rev"])
            except Exception as e:
                return [f"cannot check out revision {expid['repo_rev']!r}: {e}"]
            expid["repo_rev"] = repo_rev
        worker = Worker(0, _handlers(scheduler), launcher=scheduler.launcher,
                        term_timeout=scheduler.config.term_timeout,
                        kill_timeout=scheduler.config.kill_timeout)
        try:
            return await worker.validate(expid=expid, workdir=workdir,
                                         lab_dir=scheduler.config.lab_dir,
                                         timeout=scheduler.config.build_timeout)
        except WorkerFailed as e:
            return [_strip_rid(str(e))]
        except WorkerError as e:
            return [f"the dry run failed: {_strip_rid(str(e))}"]
        finally:
            await worker.close()
    finally:
        scheduler.release_rev(repo_rev)
