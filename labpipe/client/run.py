"""``labpipe-run``: run one experiment in this process, without a master.

For developing experiments: the experiment is built with the device database of the lab
(``device_db.py``), reads datasets from ``dataset_db.mdb`` when it exists (read-only:
nothing is written back), and gets a ``scheduler`` that never pauses. What it prints
shows on the terminal; with ``-o`` the results file is written like the master writes
it, its ``log`` holding the print lines and the log records shown.
"""

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from labpipe.client.main import UsageError, parse_arguments
from labpipe.language.argument_managers import ProcessArgumentManager
from labpipe.master.devices import DeviceDB
from labpipe.worker.datasets import DatasetManager
from labpipe.worker.devices import DeviceManager, StaticDeviceDB
from labpipe.worker.output import PrintStream
from labpipe.worker.runner import ExperimentRunner, one_line
from labpipe.worker.virtual_devices import LocalCCB, LocalScheduler

__all__ = ["get_argparser", "main"]


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labpipe-run",
                                     description="run one experiment without a master")
    parser.add_argument("--device-db", default="device_db.py",
                        help="device database file (default: %(default)s)")
    parser.add_argument("--dataset-db", default="dataset_db.mdb",
                        help="dataset database to read datasets from (default: %(default)s)")
    parser.add_argument("-c", "--class-name", default=None, help="experiment class")
    parser.add_argument("-o", "--hdf5", default=None, help="write the results to this file")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    parser.add_argument("file", help="experiment file")
    parser.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                        help="experiment arguments (PYON values)")
    return parser


def _remote_datasets(path: str) -> Callable[[str], Any]:
    """A getter of datasets from the lab's database, opened on first use."""
    cache: dict[str, dict[str, Any]] = {}

    def get(key: str) -> Any:
        if "data" not in cache:
            if not os.path.exists(path):
                raise KeyError(f"dataset '{key}' does not exist (no {path})")
            from labpipe.master.datasets import DatasetDB
            db = DatasetDB(path)
            cache["data"] = dict(db.data.raw_view)
            db.close()
        try:
            return cache["data"][key]
        except KeyError:
            raise KeyError(f"dataset '{key}' does not exist") from None
    return get


class _LogLines(logging.Handler):
    """Keeps records as the results file's log lines (``LEVEL:name:message``)."""

    def __init__(self, lines: list[str]):
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self.lines.append(f"{record.levelname}:{record.name}:{message}")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _kept_in(lines: list[str]) -> Iterator[None]:
    """While the experiment runs: what it prints still shows on the terminal, and its
    print lines and log records go into lines too (the results file's log)."""
    def keep(line: str) -> None:
        lines.append("INFO:print:" + line)
    saved = sys.stdout, sys.stderr
    handler = _LogLines(lines)
    sys.stdout = PrintStream(keep, fileno=1, echo=saved[0])
    sys.stderr = PrintStream(keep, fileno=2, echo=saved[1])
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def run(args: argparse.Namespace) -> ExperimentRunner:
    """Build, prepare, run and analyze the experiment of args; returns the runner."""
    expid = {"file": args.file, "class_name": args.class_name,
             "arguments": parse_arguments(args.arguments), "log_level": logging.WARNING}
    device_db = (DeviceDB(args.device_db) if os.path.exists(args.device_db)
                 else StaticDeviceDB({}))
    device_mgr = DeviceManager(device_db, {"scheduler": LocalScheduler(expid=expid),
                                                 "ccb": LocalCCB()})
    dataset_mgr = DatasetManager(lambda mod: None, _remote_datasets(args.dataset_db))
    runner = ExperimentRunner(rid=0, expid=expid, managers=(
        device_mgr, dataset_mgr, ProcessArgumentManager(expid["arguments"])))
    try:
        with _kept_in(runner.log_lines):
            runner.build()
            runner.prepare()
            runner.run()
            runner.analyze()
    finally:
        runner.close()
    if args.hdf5:
        runner.write_results(path=args.hdf5)
    return runner


def main(argv: list[str] | None = None) -> None:
    """Run the experiment; one-line error and exit code 1 when it fails, 130 when
    interrupted (Ctrl-C)."""
    args = get_argparser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose)
    try:
        run(args)
    except KeyboardInterrupt:
        print("labpipe-run: interrupted", file=sys.stderr)
        sys.exit(130)
    except UsageError as exc:
        print(f"labpipe-run: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"labpipe-run: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
