"""The worker process: one run's experiment, driven by the master over a pipe.

This module is what runs in the child (its parent-side counterpart is ``handle.py``;
the messages are those of ``messages.py``). The master sends one command per stage and
waits for its outcome; ``_Child.commands`` is the worker's dispatch table:

=============  ============================================  =============================
command        does                                          outcome
=============  ============================================  =============================
``Build``      import the experiment, build it (a function   ``Built``
               call: ``functions.py``)
``Prepare``    ``prepare()``                                 ``Completed``
``Run``        ``run()``                                     ``Completed``, ``Paused``,
                                                             ``Terminated``
``Resume``     (the answer to ``Paused``, read by            as ``Run``
               ``scheduler.pause()`` itself)
``Analyze``    ``analyze()``, then write the results file    ``Completed`` + its path;
               (``@offload_analyze``: sent to the Dask       ``AnalysisOffloaded``, then
               cluster, results written on its return)       ``AnalysisDone`` + its path
``Validate``   a dry run instead of build (``validate.py``)  ``Validated`` + problems
``Terminate``  (any time) exit now (``ipc.py``)              --
=============  ============================================  =============================

Any stage may instead end with ``Failed`` (one line and the traceback); when run or
analyze fails, or the run is terminated, the results file is written first (with the
error text), so that what was collected is kept. A malformed or unexpected command is
answered with ``Failed`` naming it.

While a stage runs the child streams one-way messages (``Log``, ``UpdateDataset``,
``CCBIssue``, ``SetProgress``) and makes requests (``GetDeviceDB``, ``GetDataset``, the
``scheduler`` device's calls, ``Interactive``); see ``ipc.py`` for the framing. Before
anything else the child passes the read end of its fds 1/2 pipe over the connection,
and its ``sys.stdout``/``sys.stderr`` send each line as a ``print`` log message
(``output.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from labpipe.language.argument_managers import (ProcessArgumentManager, describe_arglist,
                                                 process_values)
from labpipe.language.exceptions import CancelledArgsError, TerminationRequested
from labpipe.worker import limits
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.devices import DeviceManager, StaticDeviceDB
from labpipe.worker.functions import FUNCTION_KEY, function_class
from labpipe.worker.ipc import ChildChannel
from labpipe.language.offload import is_offloaded
from labpipe.worker.ipc import RequestFailed
from labpipe.worker.messages import (Analyze, AnalysisDone, AnalysisOffloaded, Build, Built,
                                     Command, Completed, Failed, GetDaskScheduler,
                                     GetDataset, GetDeviceDB, Interactive, Log,
                                     MalformedMessage, Outcome, Prepare, Resume, Run,
                                     Terminated, UpdateDataset, Validate, Validated, tag_of)
from labpipe.worker.offload import Offloaded, Offloader, OffloadError
from labpipe.worker.output import PrintStream, capture_fds, console_text_of
from labpipe.worker.runner import ExperimentRunner, one_line
from labpipe.worker.virtual_devices import CCB, Scheduler

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["main"]


class _PipeLogHandler(logging.Handler):
    """Sends log records to the master and keeps their lines for the results file."""

    def __init__(self, channel: ChildChannel, log_lines: list[str],
                 console: list[tuple[float, str]]) -> None:
        super().__init__()
        self._channel = channel
        self._log_lines = log_lines
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._channel.send(Log(record.levelno, record.name, message, record.created))
            self._log_lines.append(f"{record.levelname}:{record.name}:{message}")
            self._console.append((record.created,
                                  console_text_of(record.levelno, record.name, message)))
        except Exception:
            self.handleError(record)


class _RemoteDeviceDB(StaticDeviceDB):
    """The master's device database, fetched once, on the run's first device."""

    def __init__(self, channel: ChildChannel) -> None:
        super().__init__({})
        self._channel = channel
        self._fetched = False

    def get_device_db(self) -> Mapping[str, Any]:
        if not self._fetched:
            self.device_db = self._channel.request(GetDeviceDB())
            self._fetched = True
        return self.device_db

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        self.get_device_db()
        return super().get(key, resolve_alias)


class _WorkerArgumentManager(ProcessArgumentManager):
    """Arguments from the expid; interactive ones asked of the users via the master."""

    def __init__(self, arguments: dict[str, Any], channel: ChildChannel) -> None:
        super().__init__(arguments)
        self._channel = channel

    def get_interactive(self, arglist: list[Any], title: str) -> dict[str, Any]:
        values = self._channel.request(Interactive(describe_arglist(arglist), title))
        if values is None:
            raise CancelledArgsError
        return process_values(arglist, values)


class _Child:
    """The worker's side of one run: its dispatch table and the stages."""

    def __init__(self, channel: ChildChannel) -> None:
        self.channel = channel
        self.runner: ExperimentRunner | None = None
        #: the run's Dask client, connected on its first offload (``offload.py``)
        self.offloader = Offloader(self._dask_address)
        self.log_lines: list[str] = []
        #: (time, text) of each console line, for the results file's ``console``
        self.console: list[tuple[float, str]] = []
        #: The worker's dispatch table: command type -> its handler (returning the
        #: outcome). ``Resume`` outside a pause is an error; ``Terminate`` never
        #: gets here (``ChildChannel.recv_command`` exits).
        self.commands: dict[type[Command], Callable[[Any], Outcome]] = {
            Build: self.build, Prepare: self.prepare, Run: self.run, Resume: self.resume,
            Analyze: self.analyze, Validate: self.validate}

    def setup_logging(self, level: int) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_PipeLogHandler(self.channel, self.log_lines, self.console))
        root.setLevel(level)
        # print lines bypass logging: the log level filters only logging calls
        if not isinstance(sys.stdout, PrintStream):
            sys.stdout = PrintStream(self.print_line, fileno=1)
            sys.stderr = PrintStream(self.print_line, fileno=2)

    def print_line(self, line: str) -> None:
        """A line the experiment wrote to stdout or stderr: a ``print`` record at INFO
        to the master, and a line of the results file's log."""
        now = time.time()
        self.channel.send(Log(logging.INFO, "print", line, now))
        self.log_lines.append("INFO:print:" + line)
        self.console.append((now, line))

    def serve(self) -> None:
        while True:
            try:
                command = self.channel.recv_command()
            except MalformedMessage as exc:
                self.channel.send(Failed(str(exc), ""))
                continue
            handler = self.commands.get(type(command))  # type: ignore[arg-type]
            if handler is None:
                self.channel.send(Failed(f"unexpected command {tag_of(command)!r}", ""))
                continue
            try:
                outcome = handler(command)
            except Exception as exc:
                outcome = Failed(one_line(exc), traceback.format_exc())
            self.channel.send(outcome)

    def build(self, cmd: Build) -> Built:
        expid = cmd.expid
        if cmd.lab_dir:
            os.chdir(cmd.lab_dir)  # experiments see the lab directory, as under ARTIQ
        self.setup_logging(expid.get("log_level", logging.WARNING))
        channel = self.channel
        scheduler = Scheduler(channel, cmd.rid, cmd.pipeline_name, cmd.priority, expid,
                              self.offloader)
        device_mgr = DeviceManager(_RemoteDeviceDB(channel),
                                   {"scheduler": scheduler, "ccb": CCB(channel)})
        # a mod travels as the plain dict it is (the message checks only that)
        dataset_mgr = DatasetManager(
            lambda mod: channel.send(UpdateDataset(cast(dict[str, Any], mod))),
            lambda key: channel.request(GetDataset(key)))
        argument_mgr = _WorkerArgumentManager(expid.get("arguments", {}), channel)
        function_call = (function_class(expid, cmd.workdir, channel.send)
                         if FUNCTION_KEY in expid else None)
        self.runner = runner = ExperimentRunner(
            rid=cmd.rid, expid=expid, managers=(device_mgr, dataset_mgr, argument_mgr),
            workdir=cmd.workdir, results_dir=cmd.results_dir, repo_rev=cmd.repo_rev,
            log_lines=self.log_lines, console=self.console,
            experiment_class=function_call)
        runner.build()
        return Built(runner.class_name, list(device_mgr.requested),
                     "bluesky" in sys.modules or "ophyd" in sys.modules)

    def validate(self, cmd: Validate) -> Validated:
        """A dry run: the problems that would stop ``cmd.expid`` (``validate.py``)."""
        from labpipe.worker.validate import validate_experiment
        # user code is imported here: bound its memory (the process is single-use)
        limits.set_memory_limit(limits.mapped_bytes(), cmd.memory)
        self.setup_logging(logging.WARNING)  # the master drops them: a dry run is silent
        if cmd.lab_dir:
            os.chdir(cmd.lab_dir)
        channel = self.channel
        device_db = channel.request(GetDeviceDB())

        def get_dataset(key: str) -> tuple[bool, Any, dict[str, Any]]:
            try:
                return channel.request(GetDataset(key))
            except Exception as e:
                raise KeyError(str(e)) from None

        return Validated(validate_experiment(cmd.expid, workdir=cmd.workdir,
                                             device_db=device_db, get_dataset=get_dataset))

    def _runner(self) -> ExperimentRunner:
        if self.runner is None:
            raise RuntimeError("no experiment was built in this worker")
        return self.runner

    def prepare(self, cmd: Prepare) -> Completed:
        self._runner().prepare()
        return Completed()

    def _stage_with_results(self, stage: Callable[[], None]) -> Outcome:
        """Run a stage; if it fails, keep what was collected in the results file."""
        try:
            stage()
        except TerminationRequested:
            logging.getLogger("labpipe.worker").info("run terminated on request")
            return Terminated(self._write_results_quietly("terminated on request"))
        except Exception as exc:
            text = traceback.format_exc()
            path = self._write_results_quietly(f"{one_line(exc)}\n{text}")
            return Failed(one_line(exc), text, path)
        return Completed()

    def run(self, cmd: Run) -> Outcome:
        return self._stage_with_results(self._runner().run)

    def resume(self, cmd: Resume) -> Outcome:
        raise RuntimeError("resume received while not paused")

    def _dask_address(self) -> str:
        try:
            return self.channel.request(GetDaskScheduler())
        except RequestFailed as exc:
            raise OffloadError(str(exc)) from None

    def analyze(self, cmd: Analyze) -> Outcome:
        """Analyze, then write the results file; the outcome carries its path. An
        ``@offload_analyze`` experiment's analyze runs on the Dask cluster instead."""
        runner = self._runner()
        if is_offloaded(getattr(type(runner.experiment), "analyze", None)):
            return self._analyze_on_cluster(runner)
        outcome = self._stage_with_results(runner.analyze)
        if not isinstance(outcome, Completed):
            return outcome
        try:
            path = runner.write_results()
        finally:
            runner.close()
        return Completed(path)

    def _analyze_on_cluster(self, runner: ExperimentRunner) -> Outcome:
        """Send analyze to the cluster, tell the master (its analyze stage is free),
        wait for the cluster's result, write the results file; the outcome is the
        second one of the Analyze command (``AnalysisDone`` or ``Failed``)."""
        from labpipe.worker.remote_analyze import send_analysis, take_analysis
        try:
            runner.dataset_mgr.collect_offloaded()
            pending = send_analysis(runner, self.offloader)
        except Exception as exc:
            text = traceback.format_exc()
            return Failed(one_line(exc), text,
                          self._write_results_quietly(f"{one_line(exc)}\n{text}"))
        runner.close()  # the analysis needs no device: free them now
        assert self.offloader.address is not None
        self.channel.send(AnalysisOffloaded(self.offloader.address))
        try:
            error, worker = take_analysis(runner, self._wait_listening(pending))
        except Exception as exc:  # OffloadError: the cluster failed it
            message = f"offloaded analyze failed: {exc}"
            logging.getLogger("labpipe.worker").error("%s", message)
            text = traceback.format_exc()
            return Failed(message, text, self._write_results_quietly(f"{message}\n{text}"))
        if error is not None:
            message, text = error
            return Failed(message, text, self._write_results_quietly(f"{message}\n{text}"))
        return AnalysisDone(runner.write_results(), worker)

    def _wait_listening(self, pending: Offloaded) -> Any:
        """pending's result; meanwhile the master may end the run (``Terminate``:
        exits at once, as in every other stage)."""
        while True:
            try:
                return pending.result(timeout=0.1)
            except TimeoutError:
                pass
            if self.channel.poll():
                try:
                    ignored = tag_of(self.channel.recv_command())  # Terminate: exits
                except MalformedMessage as exc:
                    ignored = str(exc)
                logging.getLogger("labpipe.worker").warning(
                    "during the offloaded analysis, ignored: %s", ignored)

    def _write_results_quietly(self, error: str) -> str | None:
        runner = self._runner()
        try:
            return runner.write_results(error=error)
        except Exception:
            logging.getLogger("labpipe.worker").exception("could not write the results file")
            return None
        finally:
            runner.close()


def main(conn: Connection) -> None:
    """Entry point of the worker process (started by a ``Launcher``'s ``start_worker``)."""
    # Ctrl-C in the master's terminal reaches the whole process group: the master
    # stops its workers itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        capture_fds(conn)  # first thing: the master reads it before any message
    except OSError:
        os._exit(1)  # the master is gone (a spare it discarded): nobody to report to
    channel = ChildChannel(conn)
    try:
        _Child(channel).serve()
    finally:
        # what is written after this goes to fd 1/2, which the master reads
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        channel.close()
