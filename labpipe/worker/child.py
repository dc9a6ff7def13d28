"""The worker process: one run's experiment, driven by the master over a pipe.

This module is what runs in the child (its parent-side counterpart is ``handle.py``).
The master sends one command per stage and waits for the outcome:

=================  ==========================================  ======================
command            fields                                      outcome
=================  ==========================================  ======================
``build``          rid, pipeline_name, priority, expid,        ``completed`` +
                   workdir, lab_dir, results_dir, repo_rev     class_name, devices,
                                                               bluesky (imported?)
``prepare``                                                    ``completed``
``run``                                                        ``completed``,
                                                               ``paused``,
                                                               ``terminated``
``resume``         terminate (bool): answer to ``paused``      as ``run``
``analyze``        (then writes the results file)              ``completed`` + results
``validate``       expid, workdir, lab_dir (instead of build:  ``completed`` + problems
                   a dry run, see ``validate.py``)
``terminate``      (any time) exit now                         --
=================  ==========================================  ======================

Any stage may instead end with ``{"action": "exception", "message": one line,
"traceback": text}``; when run or analyze fails, or the run is terminated, the results
file is written first (with the error text), so that what was collected is kept.

While a stage runs the child streams one-way messages (``log``, ``update_dataset``,
``ccb_issue``, ``set_progress``) and makes requests (``get_device_db``, ``get_dataset``,
``check_pause``, ``check_termination``, ``submit``, ``delete``, ``request_termination``,
``get_status``, ``interactive``); see ``ipc.py`` for the framing. Before anything else
the child passes the read end of its fds 1/2 pipe over the connection, and its
``sys.stdout``/``sys.stderr`` send each line as a ``print`` log message
(``output.py``).
"""

import logging
import os
import signal
import sys
import time
import traceback

from labpipe.language.argument_managers import (ProcessArgumentManager, describe_arglist,
                                                 process_values)
from labpipe.language.exceptions import CancelledArgsError, TerminationRequested
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.devices import DeviceManager, StaticDeviceDB
from labpipe.worker import limits
from labpipe.worker.ipc import ChildChannel
from labpipe.worker.output import PrintStream, capture_fds
from labpipe.worker.runner import ExperimentRunner, one_line
from labpipe.worker.virtual_devices import CCB, Scheduler

__all__ = ["main"]


class _PipeLogHandler(logging.Handler):
    """Sends log records to the master and keeps their lines for the results file."""

    def __init__(self, channel, log_lines):
        super().__init__()
        self._channel = channel
        self._log_lines = log_lines

    def emit(self, record):
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._channel.send({"action": "log", "levelno": record.levelno,
                                "name": record.name, "message": message,
                                "created": record.created})
            self._log_lines.append(f"{record.levelname}:{record.name}:{message}")
        except Exception:
            self.handleError(record)


class _RemoteDeviceDB(StaticDeviceDB):
    """The master's device database, fetched once, on the run's first device."""

    def __init__(self, channel):
        super().__init__(None)
        self._channel = channel

    def get_device_db(self):
        if self.device_db is None:
            self.device_db = self._channel.request("get_device_db")
        return self.device_db

    def get(self, key, resolve_alias=False):
        self.get_device_db()
        return super().get(key, resolve_alias)


class _WorkerArgumentManager(ProcessArgumentManager):
    """Arguments from the expid; interactive ones asked of the users via the master."""

    def __init__(self, arguments, channel):
        super().__init__(arguments)
        self._channel = channel

    def get_interactive(self, arglist, title):
        values = self._channel.request("interactive", arglist_desc=describe_arglist(arglist),
                                       title=title)
        if values is None:
            raise CancelledArgsError
        return process_values(arglist, values)


class _Child:
    def __init__(self, channel):
        self.channel = channel
        self.runner = None
        self.log_lines = []
        self.commands = {"build": self.build, "prepare": self.prepare, "run": self.run,
                         "resume": self.resume, "analyze": self.analyze,
                         "validate": self.validate}

    def setup_logging(self, level):
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_PipeLogHandler(self.channel, self.log_lines))
        root.setLevel(level)
        # print lines bypass logging: the log level filters only logging calls
        if not isinstance(sys.stdout, PrintStream):
            sys.stdout = PrintStream(self.print_line, fileno=1)
            sys.stderr = PrintStream(self.print_line, fileno=2)

    def print_line(self, line: str) -> None:
        """A line the experiment wrote to stdout or stderr: a ``print`` record at INFO
        to the master, and a line of the results file's log."""
        self.channel.send({"action": "log", "levelno": logging.INFO, "name": "print",
                           "message": line, "created": time.time()})
        self.log_lines.append("INFO:print:" + line)

    def serve(self):
        while True:
            command = self.channel.recv_command()
            handler = self.commands.get(command.get("action"))
            if handler is None:
                self.channel.send({"action": "exception", "traceback": "",
                                   "message": f"unknown command {command.get('action')!r}"})
                continue
            try:
                outcome = handler(command)
            except Exception as exc:
                self.channel.send({"action": "exception", "message": one_line(exc),
                                   "traceback": traceback.format_exc()})
            else:
                self.channel.send(outcome)

    def build(self, cmd):
        expid = cmd["expid"]
        if cmd.get("lab_dir"):
            os.chdir(cmd["lab_dir"])  # experiments see the lab directory, as under ARTIQ
        self.setup_logging(expid.get("log_level", logging.WARNING))
        channel = self.channel
        scheduler = Scheduler(channel, cmd["rid"], cmd["pipeline_name"], cmd["priority"],
                              expid)
        device_mgr = DeviceManager(_RemoteDeviceDB(channel),
                                   {"scheduler": scheduler, "ccb": CCB(channel)})
        dataset_mgr = DatasetManager(
            lambda mod: channel.send({"action": "update_dataset", "mod": mod}),
            lambda key: channel.request("get_dataset", key=key))
        argument_mgr = _WorkerArgumentManager(expid.get("arguments", {}), channel)
        self.runner = ExperimentRunner(
            rid=cmd["rid"], expid=expid, managers=(device_mgr, dataset_mgr, argument_mgr),
            workdir=cmd.get("workdir"), results_dir=cmd["results_dir"],
            repo_rev=cmd.get("repo_rev"), log_lines=self.log_lines)
        self.runner.build()
        return {"action": "completed", "class_name": self.runner.class_name,
                "devices": list(getattr(device_mgr, "requested", [])),
                "bluesky": "bluesky" in sys.modules or "ophyd" in sys.modules}

    def validate(self, cmd):
        """A dry run: the problems that would stop ``cmd["expid"]`` (``validate.py``)."""
        from labpipe.worker.validate import validate_command
        # user code is imported here: bound its memory (the process is single-use)
        limits.set_memory_limit(limits.mapped_bytes(),
                                cmd.get("memory", limits.DEFAULT_VALIDATE_MEMORY))
        self.setup_logging(logging.WARNING)  # the master drops them: a dry run is silent
        return validate_command(self.channel, cmd)

    def prepare(self, cmd):
        self.runner.prepare()
        return {"action": "completed"}

    def _stage_with_results(self, stage):
        """Run a stage; if it fails, keep what was collected in the results file."""
        try:
            stage()
        except TerminationRequested:
            logging.getLogger("labpipe.worker").info("run terminated on request")
            path = self._write_results_quietly("terminated on request")
            return {"action": "terminated", "results": path}
        except Exception as exc:
            text = traceback.format_exc()
            path = self._write_results_quietly(f"{one_line(exc)}\n{text}")
            return {"action": "exception", "message": one_line(exc), "traceback": text,
                    "results": path}
        return {"action": "completed"}

    def run(self, cmd):
        return self._stage_with_results(self.runner.run)

    def resume(self, cmd):
        raise RuntimeError("resume received while not paused")

    def analyze(self, cmd):
        """Analyze, then write the results file; the outcome carries its path."""
        outcome = self._stage_with_results(self.runner.analyze)
        if outcome["action"] != "completed":
            return outcome
        try:
            path = self.runner.write_results()
        finally:
            self.runner.close()
        return {"action": "completed", "results": path}

    def _write_results_quietly(self, error):
        try:
            return self.runner.write_results(error=error)
        except Exception:
            logging.getLogger("labpipe.worker").exception("could not write the results file")
            return None
        finally:
            self.runner.close()


def main(conn):
    """Entry point of the worker process (started by ``launcher.start_worker``)."""
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
