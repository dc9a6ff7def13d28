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

from labpipe.worker.importer import get_experiment, import_file
from labpipe.worker.results import results_path, write_results
from labpipe.worker.script import black_box_class

__all__ = ["ExperimentRunner", "source_file", "one_line"]

logger = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a failed stage is reported in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def source_file(expid: dict, workdir: str | None):
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

    def __init__(self, *, rid, expid, managers, workdir=None, results_dir="results",
                 repo_rev=None, log_lines=None):
        self.rid = rid
        self.expid = expid
        self.device_mgr, self.dataset_mgr, self.argument_mgr = managers
        self.workdir = workdir
        self.results_dir = results_dir
        self.repo_rev = repo_rev
        self.log_lines = log_lines if log_lines is not None else []
        self.class_name = expid.get("class_name") or "Experiment"
        self.start_time = time.time()
        self.run_time = None
        self.experiment = None

    def build(self):
        """Import the experiment and build it with its arguments (a black-box script
        is compiled instead: see ``script.py``)."""
        path, temporary = source_file(self.expid, self.workdir)
        try:
            script_cls = black_box_class(path, self.expid)
            module = import_file(path) if script_cls is None else None
        finally:
            if temporary:
                os.unlink(path)
        if not temporary:
            # the process is the run's own: keep the experiment's folder importable, so
            # that build() and later stages can import sibling modules too
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        cls = script_cls or get_experiment(module, self.expid.get("class_name"))
        self.class_name = cls.__name__
        self.start_time = time.time()
        self.experiment = cls((self.device_mgr, self.dataset_mgr, self.argument_mgr, {}))
        self.argument_mgr.check_unprocessed()

    def prepare(self):
        self.experiment.prepare()

    def run(self):
        self.run_time = time.time()
        self.experiment.run()

    def analyze(self):
        self.experiment.analyze()

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
            log_lines=self.log_lines, error=error, extra_groups=self.extra_groups())
        return path

    def extra_groups(self) -> dict:
        """The extra results-file groups the dataset manager's ``result_groups`` give
        (e.g. ``bluesky/``); a group that fails is logged and left out."""
        groups = {}
        for name, provider in getattr(self.dataset_mgr, "result_groups", {}).items():
            try:
                groups[name] = provider()
            except Exception:
                logger.exception("results group %r not written", name)
        return groups

    def close(self):
        """Close the devices the experiment opened."""
        self.device_mgr.close_devices()
