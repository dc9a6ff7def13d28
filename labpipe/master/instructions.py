"""Instructions: queue entries that tell their pipeline what to do instead of running.

``schedule.submit_instruction(pipeline_name, name, before=, after=, pos=)`` queues an
instruction as a run of the pipeline: it takes a RID, is on disk before the RID is
returned (a restart keeps it in its place), shows in the ``schedule`` notifier, and can
be moved, reprioritized and deleted like any pending run. Its expid is
``{"file": "<instruction>", "class_name": NAME, "arguments": {}, "log_level": 30,
"instruction": NAME}`` (the ``instruction`` key marks it; ARTIQ clients see a run of
class NAME).

The one instruction is ``queue_stop`` (bluesky-queueserver's): when the prepare stage
reaches it and nothing of the pipeline is prepared, running or paused any more (every
run before it has finished running), the pipeline is held (``schedule.hold``: on disk
first), then the instruction ends as ``completed`` without a worker. Nothing after it
starts until ``schedule.release``. A master that stops between the two puts it back
on restart in a held pipeline: it then stops the queue once more on the next release
rather than never.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labpipe.master.precedence import RunStatus
from labpipe.master.run import Run, RunEnd

if TYPE_CHECKING:
    from labpipe.master.scheduler import Scheduler

__all__ = ["INSTRUCTIONS", "INSTRUCTION_FILE", "instruction_expid", "instruction_of",
           "execute_when_due"]

logger = logging.getLogger(__name__)

#: The instructions labpipe knows.
INSTRUCTIONS = ("queue_stop",)
#: The expid's ``file`` of an instruction (no file: nothing is examined or imported).
INSTRUCTION_FILE = "<instruction>"
#: What must have left the run stage before an instruction takes effect.
_AHEAD = (RunStatus.prepare_done, RunStatus.running, RunStatus.paused)


def instruction_expid(name: object) -> dict[str, Any]:
    """The expid of instruction name; ValueError naming the known ones otherwise."""
    if name not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {name!r}: labpipe knows "
                         f"{', '.join(INSTRUCTIONS)}")
    return {"file": INSTRUCTION_FILE, "class_name": name, "arguments": {},
            "log_level": logging.WARNING, "instruction": name}


def instruction_of(expid: dict[str, Any] | None) -> str | None:
    """The instruction an expid stands for, or None for an experiment."""
    name = (expid or {}).get("instruction")
    return name if isinstance(name, str) else None


async def execute_when_due(scheduler: Scheduler, run: Run) -> bool:
    """The prepare stage reached the instruction run: carry it out if every run ahead
    of it has left the run stage (True), or do nothing yet (False: wait for a change)."""
    pipeline = scheduler.pipelines[run.pipeline_name]
    if pipeline.runs.in_status(*_AHEAD):
        return False
    name = instruction_of(run.expid)
    if name == "queue_stop":
        await scheduler.queue.hold(run.pipeline_name)
        logger.info("RID %d: queue_stop reached, pipeline %s held", run.rid,
                    run.pipeline_name)
    await scheduler.end_run(run, RunEnd("completed"))
    return True
