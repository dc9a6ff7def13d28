"""One experiment's life: import, build, prepare, run, analyze, write results.

Shared by the worker process (under the master) and ``labpipe-run`` (without one): the
caller supplies the managers, the runner does the stages in order and keeps what the
results file needs (start and run times, the class name, the datasets).
"""

import logging
import os
import sys
import tempfile
import time
from typing import Any

from labpipe.language.argument_managers import ProcessArgumentManager
from labpipe.language.environment import Experiment
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.devices import DeviceManager
from labpipe.worker.importer import get_experiment, import_file
from labpipe.worker.results import results_path, write_results
from labpipe.worker.script import black_box_class

__all__ = ["ExperimentRunner", "source_file", "one_line"]

logger = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a failed stage is reported in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def source_file(expid: dict[str, Any], workdir: str | None) -> tuple[str, bool]:
    """The file to import for expid: in the checkout workdir when from the repository,
    else the path itself; with ``content``, a temporary file holding the text (the
    caller removes it). Returns ``(path, is_temporary)``."""
    if "content" in expid and expid["content"] is not None:
        fd, path = tempfile.mkstemp(suffix=".py", prefix="labpipe_content_")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(expid["content"])
        return path, True
    if workdir is not None:
        return os.path.join(workdir, expid["file"]), False
    return expid["file"], False


class ExperimentRunner:
    """Runs the stages of one experiment with the managers it is given."""

    def __init__(self, *, rid: int, expid: dict[str, Any],
                 managers: tuple[DeviceManager, DatasetManager, ProcessArgumentManager],
                 workdir: str | None = None, results_dir: str = "results",
                 repo_rev: str | None = None, log_lines: list[str] | None = None,
                 console: list[tuple[float, str]] | None = None,
                 experiment_class: type[Any] | None = None):
        self.rid = rid
        #: the class to build instead of one imported from the expid's file (a
        #: function call: ``functions.py``)
        self.experiment_class = experiment_class
        self.expid = expid
        self.device_mgr, self.dataset_mgr, self.argument_mgr = managers
        self.workdir = workdir
        self.results_dir = results_dir
        self.repo_rev = repo_rev
        self.log_lines = log_lines if log_lines is not None else []
        #: (time, text) of each console line (results file ``console/``)
        self.console = console if console is not None else []
        self.class_name = expid.get("class_name") or "Experiment"
        self.start_time = time.time()
        self.run_time: float | None = None
        self.experiment: Experiment | None = None

    def build(self) -> None:
        """Import the experiment and build it with its arguments (a black-box script
        is compiled instead: see ``script.py``; ``experiment_class`` is built as it is)."""
        if self.experiment_class is not None:
            self._build_class(self.experiment_class)
            return
        path, temporary = source_file(self.expid, self.workdir)
        try:
            script_cls = black_box_class(path, self.expid)
            found = script_cls if script_cls is not None else import_file(path)
        finally:
            if temporary:
                os.unlink(path)
        if not temporary:
            # the process is the run's own: keep the experiment's folder importable, so
            # that build() and later stages can import sibling modules too
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        cls = (found if isinstance(found, type)
               else get_experiment(found, self.expid.get("class_name")))
        self._build_class(cls)

    def _build_class(self, cls: type[Any]) -> None:
        self.class_name = cls.__name__
        self.start_time = time.time()
        self.experiment = cls((self.device_mgr, self.dataset_mgr, self.argument_mgr, {}))
        self.argument_mgr.check_unprocessed()

    def _built(self) -> Experiment:
        if self.experiment is None:
            raise RuntimeError(f"RID {self.rid}: the experiment is not built (build() first)")
        return self.experiment

    def prepare(self) -> None:
        self._built().prepare()

    def run(self) -> None:
        self.run_time = time.time()
        self._built().run()

    def analyze(self) -> None:
        """Collect the datasets set to offloaded results, then ``analyze()``."""
        self.dataset_mgr.collect_offloaded()
        self._built().analyze()

    def write_results(self, error: str | None = None, path: str | None = None) -> str:
        """Write the results file (atomically) at path, by default where the master
        keeps it (results/DATE/HOUR/RID-Class.h5); returns its path."""
        if path is None:
            path = results_path(self.results_dir, self.rid, self.class_name,
                                self.start_time)
        write_results(
            path, rid=self.rid, start_time=self.start_time,
            run_time=self.run_time if self.run_time is not None else self.start_time,
            expid=self.expid, repo_rev=self.repo_rev,
            datasets=self.dataset_mgr.local, archive=self.dataset_mgr.archive,
            log_lines=self.log_lines, error=error, extra_groups=self.extra_groups(),
            stream_files=self.device_mgr.stream_spools(),
            console=self.console)
        return path

    def extra_groups(self) -> dict[str, Any]:
        """The extra results-file groups the dataset manager's ``result_groups`` give
        (e.g. ``bluesky/``); a group that fails is logged and left out."""
        groups = {}
        for name, provider in getattr(self.dataset_mgr, "result_groups", {}).items():
            try:
                groups[name] = provider()
            except Exception:
                logger.exception("results group %r not written", name)
        return groups

    def close(self) -> None:
        """Close the devices the experiment opened."""
        self.device_mgr.close_devices()
