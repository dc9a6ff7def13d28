"""The bluesky runs of the labpipe run now running, for the master to show.

``RunList(environment, rid)`` is a RunEngine callback keeping one broadcast dataset,
``bluesky.runs``: ``{"rid": the labpipe RID, "runs": [{"uid", "is_open",
"exit_status"}, ...]}`` (the newest ``MAX_RUNS`` runs of this labpipe run, in order),
set again at every start and stop document. It is not archived (the results file has
the documents). The queueserver endpoint answers ``re_runs`` from it for the running
item, as the RE Manager answers from its worker's run list.
"""

from __future__ import annotations

from typing import Any

from event_model import DocumentRouter, RunStart, RunStop

__all__ = ["RunList", "RUNS_KEY", "MAX_RUNS"]

RUNS_KEY = "bluesky.runs"
MAX_RUNS = 1000


class RunList(DocumentRouter):
    """Publishes the runs' uids and states (module docstring)."""

    def __init__(self, environment: Any, rid: int | None):
        super().__init__()
        self._env = environment
        self._rid = rid
        self._runs: list[dict[str, Any]] = []

    def start(self, doc: RunStart) -> RunStart:
        self._runs.append({"uid": doc["uid"], "is_open": True, "exit_status": None})
        del self._runs[:-MAX_RUNS]
        self._publish()
        return doc

    def stop(self, doc: RunStop) -> RunStop:
        for run in self._runs:
            if run["uid"] == doc["run_start"]:
                run["is_open"], run["exit_status"] = False, doc.get("exit_status")
        self._publish()
        return doc

    def _publish(self) -> None:
        if self._rid is None:  # not under a master: nobody to tell
            return
        self._env.set_dataset(RUNS_KEY, {"rid": self._rid,
                                         "runs": [dict(r) for r in self._runs]},
                              broadcast=True, archive=False)
