"""The end of a run whose analysis runs on the Dask cluster (``@offload_analyze``).

The worker answers ``Analyze`` with ``AnalysisOffloaded`` as soon as the analysis is on
the cluster: the pipeline's analyze stage moves on to the next run at once, and
``finish_offloaded`` (a task of the scheduler's, one per such run) awaits the worker's
second outcome. The run stays in the schedule as ``analyzing`` meanwhile; it leaves it
as ``completed`` with the results file the worker wrote when the cluster's result came
back, or as ``failed`` with the cluster's error (scheduler gone, worker lost, analyze
raising: ``labpipe.worker.offload``). The run's ``analyzed_on`` (its history record's)
says where it ran. Nothing here waits on the cluster itself: the worker does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.master.run import Run, RunEnd
from labpipe.worker.messages import AnalysisOffloaded

if TYPE_CHECKING:
    from labpipe.master.pipeline import Pipeline

__all__ = ["finish_offloaded"]


async def finish_offloaded(pipeline: Pipeline, run: Run, sent: AnalysisOffloaded) -> None:
    """Await the offloaded analysis of run, then end the run (``Scheduler.end_run``)."""
    run.analyzed_on = {"dask_scheduler": sent.scheduler, "dask_worker": None}
    worker = run.worker
    try:
        if worker is None:
            raise RuntimeError(f"RID {run.rid} has no worker")
        done = await worker.analysis_done()
    except Exception as exc:
        await pipeline.stage_failed(run, "analyze on the Dask cluster", exc)
        return
    run.analyzed_on["dask_worker"] = done.worker
    await pipeline.scheduler.end_run(run, RunEnd("completed", results=done.results))
