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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labpipe.master.expid import validate_submission
from labpipe.master.repository.db import caller
from labpipe.worker.handle import Worker, WorkerError, WorkerFailed

if TYPE_CHECKING:  # the scheduler imports this module: no import at run time
    from labpipe.master.scheduler import Scheduler

__all__ = ["validate_run"]

logger = logging.getLogger(__name__)

#: Worker messages a dry run answers; everything else a build could send is dropped.
_SILENT = ("log", "update_dataset", "ccb_issue", "set_progress")


def _strip_rid(message: str) -> str:
    return message.split(": ", 1)[1] if message.startswith("RID ") else message


def _handlers(scheduler: Scheduler) -> dict[str, Callable[[dict], object]]:
    base = scheduler.worker_handlers(None)
    handlers: dict[str, Callable[[dict], object]] = {name: (lambda msg: None)
                                                     for name in _SILENT}
    for name in ("get_device_db", "get_dataset"):
        if name in base:
            handlers[name] = base[name]
    if "get_device_db" not in handlers:
        handlers["get_device_db"] = lambda msg: {}
    handlers["check_pause"] = lambda msg: False
    handlers["check_termination"] = lambda msg: False
    handlers["get_status"] = lambda msg: scheduler.get_status()
    handlers["interactive"] = lambda msg: None  # cancelled: nobody is asked
    return handlers


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
