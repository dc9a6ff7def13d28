"""What ``EnvExperiment.run_plan`` uses: one RunEngine and its callbacks per run.

``session_for(environment, dataset_mgr)`` gives the ``PlanSession`` of a labpipe run
(one per dataset manager, i.e. per run: an experiment and its children share it),
making it on first use:

- ``engine``: the RunEngine of ``engine.make_run_engine`` for the run's ``scheduler``
  device (install suspenders on it, subscribe more callbacks to it);
- subscribed callbacks: ``LiveDatasets`` (broadcast datasets ``bluesky.<stream>.<field>``),
  ``RunList`` (the broadcast dataset ``bluesky.runs``: the runs' uids and states),
  ``LogTable`` (a line per event in the run's log) and ``DocumentArchive`` (the results
  file's ``bluesky/`` group, registered in the dataset manager's ``result_groups``);
- ``run(plan, **metadata)``: runs the plan to its end, yielding to the scheduler at
  checkpoints (``pausing.run_until_done``); returns the tuple of start uids.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import Any

from bluesky.utils import Msg

from labpipe.bluesky.archive import DocumentArchive
from labpipe.bluesky.engine import make_run_engine
from labpipe.bluesky.live import LiveDatasets
from labpipe.bluesky.pausing import run_until_done
from labpipe.bluesky.runs import RunList
from labpipe.bluesky.table import LogTable

__all__ = ["PlanSession", "session_for", "RESULTS_GROUP"]

logger = logging.getLogger(__name__)

#: Name of the results file's group holding the documents.
RESULTS_GROUP = "bluesky"

_sessions: "weakref.WeakKeyDictionary[Any, PlanSession]" = weakref.WeakKeyDictionary()


def _scheduler_of(environment: Any) -> Any:
    try:
        return environment.get_device("scheduler")
    except Exception:  # no scheduler device (a test double, a bare device manager)
        logger.debug("no scheduler device: plans will not yield to other runs")
        return None


class PlanSession:
    """The RunEngine and callbacks of one labpipe run (module docstring)."""

    def __init__(self, environment: Any, dataset_mgr: Any = None):
        self.scheduler = _scheduler_of(environment)
        self.engine = make_run_engine(self.scheduler)
        self.archive = DocumentArchive()
        self.live = LiveDatasets(environment)
        self.table = LogTable()
        self.runs = RunList(environment, getattr(self.scheduler, "rid", None))
        for callback in (self.live, self.runs, self.table, self.archive):
            self.engine.subscribe(callback)
        result_groups = getattr(dataset_mgr, "result_groups", None)
        if result_groups is not None:
            result_groups[RESULTS_GROUP] = self.archive.groups
        else:
            logger.warning("the dataset manager keeps no extra results groups: bluesky "
                           "documents will not be in the results file")

    def run(self, plan: Iterable[Msg], **metadata: Any) -> tuple[str, ...]:
        """Run ``plan`` with ``metadata`` added to its start documents; returns the
        start uids of the runs it made."""
        return tuple(run_until_done(self.engine, plan, self.scheduler, metadata))


def session_for(environment: Any, dataset_mgr: Any) -> PlanSession:
    """The run's ``PlanSession``, made on first use (module docstring)."""
    try:
        session = _sessions.get(dataset_mgr)
    except TypeError:  # not weakly referenceable: one session per environment instead
        session = getattr(environment, "_labpipe_plan_session", None)
        if session is None:
            session = PlanSession(environment, dataset_mgr)
            environment._labpipe_plan_session = session
        return session
    if session is None:
        session = PlanSession(environment, dataset_mgr)
        _sessions[dataset_mgr] = session
    return session
