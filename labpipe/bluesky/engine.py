"""A RunEngine made for one labpipe run.

``make_run_engine(scheduler)`` builds a ``bluesky.RunEngine`` for use inside a worker:

- ``context_managers=[]``: the RunEngine installs no SIGINT handler (the worker ignores
  SIGINT; the master pauses, terminates and deletes runs through the scheduler);
- ``RE.md`` carries the run's identity, so every start document has it: ``rid``,
  ``pipeline``, ``expid`` and ``repo_rev`` (None unless the experiment came from the
  repository);
- ``RE.record_interruptions`` is on: pauses and resumes appear as events of the
  ``interruptions`` stream (in the live datasets and the results file);
- the ``scheduler_checkpoints`` preprocessor (see ``pausing.py``) is installed.
"""

from __future__ import annotations

from typing import Any

from bluesky import RunEngine

from labpipe.bluesky.pausing import scheduler_checkpoints

__all__ = ["make_run_engine", "run_metadata"]


def run_metadata(scheduler: Any) -> dict:
    """The start-document metadata identifying the labpipe run of ``scheduler``."""
    expid = dict(getattr(scheduler, "expid", None) or {})
    return {"rid": getattr(scheduler, "rid", None),
            "pipeline": getattr(scheduler, "pipeline_name", None),
            "expid": expid,
            "repo_rev": expid.get("repo_rev")}


def make_run_engine(scheduler: Any = None) -> RunEngine:
    """A RunEngine for the run of ``scheduler`` (the ``scheduler`` device; None: no
    scheduler, so no pausing and no run identity)."""
    engine = RunEngine(context_managers=[])
    engine.record_interruptions = True
    if scheduler is not None:
        engine.md.update(run_metadata(scheduler))
        engine.preprocessors.append(scheduler_checkpoints(scheduler))
    return engine
