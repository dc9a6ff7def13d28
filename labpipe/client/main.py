"""``labpipe-client``: submit, delete and inspect runs of a labpipe (or ARTIQ) master.

Modelled on ``artiq_client``. Every error is one line on stderr and a distinct exit code:
0 success, 2 usage error, 3 the master refused the request, 4 the master is unreachable
(``wait`` exits with 1 when the run ended other than ``completed``). People get aligned
tables; ``--json`` prints JSON for scripts (dict keys as strings, tuples as lists).

Commands use the control port (``--port``); ``show datasets``, ``show explist``, ``show
interactive-args`` and ``show schedule --watch`` the notify port (``--port-notify``);
``show log`` and ``show ccb`` follow the broadcast port (``--port-broadcast``) until
interrupted.
"""

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from labpipe.client.connection import Connection, Unreachable
from labpipe.client.formatting import (format_datasets, format_devices, format_explist,
                                       format_history, format_interactive, format_log,
                                       format_record, format_schedule, print_json)
from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client

__all__ = ["get_argparser", "main", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_UNREACHABLE"]

EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """``NAME=PYON`` pairs to a dict; a value that is not PYON is taken as a string."""
    arguments = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"argument {pair!r} is not of the form NAME=VALUE")
        try:
            arguments[name] = pyon.decode(text)
        except ValueError:
            arguments[name] = text
    return arguments


def parse_due_date(text: str) -> float:
    """A due date as a UNIX time: ISO 8601 ('2026-11-21 14:30'), a time today ('14:30'),
    or '+SECONDS' from now."""
    from datetime import datetime
    if text.startswith("+"):
        try:
            seconds = float(text[1:])
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return time.time() + seconds
    else:
        for fmt in (None, "%H:%M", "%H:%M:%S"):
            try:
                if fmt is None:
                    return datetime.fromisoformat(text).timestamp()
                t = datetime.strptime(text, fmt).time()
                return datetime.combine(datetime.now().date(), t).timestamp()
            except ValueError:
                continue
    raise UsageError(f"cannot read due date {text!r} (use e.g. '2026-11-21 14:30', "
                     "'14:30' or '+60')")


def _seconds(text: str) -> float:
    """argparse type: a duration in seconds, finite and not negative."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labpipe-client",
                                     description="labpipe command-line client")
    parser.add_argument("-s", "--server", default="127.0.0.1",
                        help="hostname or IP of the master (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3251,
                        help="control port of the master (default: %(default)s)")
    parser.add_argument("--port-notify", type=int, default=3250, metavar="PORT",
                        help="notify port of the master (default: %(default)s)")
    parser.add_argument("--port-broadcast", type=int, default=1067, metavar="PORT",
                        help="broadcast port of the master (default: %(default)s)")
    parser.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                        help="connect with mutual TLS (a master started with --ssl): "
                             "CERT and KEY are this client's certificate and key, PEER "
                             "the master's certificate")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (one document, or one line per update) for scripts")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("submit", help="submit an experiment")
    p.add_argument("-p", "--pipeline", default="main", help="pipeline (default: %(default)s)")
    p.add_argument("-P", "--priority", type=int, default=0, help="priority (higher first)")
    p.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                   help="due date: '2026-11-21 14:30', '14:30' or '+SECONDS'")
    p.add_argument("-f", "--flush", action="store_true",
                   help="wait for runs of this priority or higher to finish first")
    p.add_argument("-R", "--repository", action="store_true",
                   help="the file is in the master's experiment repository")
    p.add_argument("-r", "--revision", default=None,
                   help="repository revision (commit, branch or tag; default: current)")
    p.add_argument("--content", action="store_true",
                   help="send the file's content instead of its path")
    p.add_argument("-c", "--class-name", default=None, help="experiment class")
    p.add_argument("--dry-run", action="store_true",
                   help="only check the submission (file, class, arguments, devices) in "
                        "a worker without running it; prints the problems (exit code 3 "
                        "when there are any)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="worker log level down")
    p.add_argument("-q", "--quiet", action="count", default=0, help="worker log level up")
    p.add_argument("file", help="experiment file")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="experiment arguments (PYON values)")

    p = sub.add_parser("delete", help="delete a run")
    p.add_argument("-g", "--graceful", action="store_true",
                   help="request termination instead of deleting")
    p.add_argument("rid", type=int, nargs="+", help="run id(s)")

    p = sub.add_parser("change", help="edit a pending run (priority, due date, "
                                      "pipeline, flush, arguments merged in)")
    p.add_argument("rid", type=int, help="run id")
    p.add_argument("-P", "--priority", type=int, default=None, help="new priority")
    p.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                   help="new due date: '2026-11-21 14:30', '14:30', '+SECONDS', or "
                        "'none' to remove it")
    p.add_argument("-p", "--pipeline", default=None, help="move it to this pipeline")
    p.add_argument("-f", "--flush", default=None, action=argparse.BooleanOptionalAction,
                   help="flush (or not) before it prepares")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="arguments to change (PYON values)")

    for name, text in (("hold", "hold pipelines: they start no new run"),
                       ("release", "release held pipelines")):
        p = sub.add_parser(name, help=text)
        p.add_argument("pipeline", nargs="+", help="pipeline name(s)")

    p = sub.add_parser("show", help="show the schedule, history, datasets, devices, "
                                    "interactive arguments, or follow the log or ccb")
    p.add_argument("what", choices=sorted(_SHOW), help="what to show")
    p.add_argument("-w", "--watch", action="store_true",
                   help="schedule: keep showing it as it changes (Ctrl-C ends)")
    p.add_argument("-n", "--limit", type=int, default=20,
                   help="history: at most this many runs (default: %(default)s)")

    p = sub.add_parser("history", help="past runs, newest first; or one run in full")
    p.add_argument("-n", "--limit", type=int, default=20,
                   help="at most this many runs (default: %(default)s)")
    p.add_argument("-b", "--before", type=int, default=None, metavar="RID",
                   help="only runs with a RID below this one")
    p.add_argument("rid", type=int, nargs="?", help="show this run's record in full")

    p = sub.add_parser("resubmit", help="submit a past run again (same expid, pipeline, "
                                        "priority, revision) with changes")
    p.add_argument("-p", "--pipeline", default=None, help="another pipeline")
    p.add_argument("-P", "--priority", type=int, default=None, help="another priority")
    p.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                   help="due date: '2026-11-21 14:30', '14:30' or '+SECONDS'")
    p.add_argument("-f", "--flush", action="store_true",
                   help="flush (wait for runs of this priority or higher)")
    p.add_argument("-r", "--revision", default=None, help="another repository revision")
    p.add_argument("rid", type=int, help="the run to submit again")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="arguments to change (PYON values)")

    p = sub.add_parser("wait", help="wait until a run has ended and print its record "
                                    "(exit code 1 when it did not complete)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="give up after this long (exit code 3)")
    p.add_argument("rid", type=int, help="run id")

    p = sub.add_parser("set-dataset", help="set a dataset")
    persist = p.add_mutually_exclusive_group()
    persist.add_argument("-p", "--persist", action="store_true", default=None,
                         help="make the dataset persistent")
    persist.add_argument("-n", "--no-persist", dest="persist", action="store_false",
                         help="make the dataset non-persistent")
    p.add_argument("key", help="dataset key")
    p.add_argument("value", help="the value in PYON, e.g. 1.5, [1, 2], '\"text\"'")

    p = sub.add_parser("del-dataset", help="delete a dataset")
    p.add_argument("key", help="dataset key")

    sub.add_parser("scan-devices", help="reload the device database")

    p = sub.add_parser("scan-repository", help="rescan the experiment repository")
    p.add_argument("--async", action="store_true", dest="run_async",
                   help="return at once; the scan goes on in the master")
    p.add_argument("revision", nargs="?", default=None,
                   help="make this revision the current one (default: the newest)")

    p = sub.add_parser("ls", help="list a folder of the lab directory or the repository")
    p.add_argument("directory", nargs="?", default="", help="folder (default: the lab)")

    sub.add_parser("terminate", help="shut the master down")

    p = sub.add_parser("supply-interactive",
                       help="give a run the interactive arguments it asks for")
    p.add_argument("rid", type=int, help="run id")
    p.add_argument("arguments", nargs="+", metavar="NAME=VALUE",
                   help="argument values (PYON)")

    p = sub.add_parser("cancel-interactive", help="cancel a run's interactive request")
    p.add_argument("rid", type=int, help="run id")
    return parser


def _submit(args: argparse.Namespace, schedule: Client) -> None:
    expid: dict[str, Any]
    if args.content:
        if args.repository:
            raise UsageError("--content and --repository cannot be combined")
        try:
            with open(args.file, encoding="utf-8") as f:
                expid = {"content": f.read()}
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        expid = {"file": args.file}
    expid.update({
        "log_level": logging.WARNING + 10 * (args.quiet - args.verbose),
        "class_name": args.class_name,
        "arguments": parse_arguments(args.arguments),
    })
    if args.repository:
        expid["repo_rev"] = args.revision
    if args.dry_run:
        problems = schedule.validate(args.pipeline, expid)
        for problem in problems:
            print(f"problem: {problem}")
        if problems:
            sys.exit(EXIT_REFUSED)
        print("OK: the run would start")
        return
    due_date = parse_due_date(args.timed) if args.timed else None
    rid = schedule.submit(args.pipeline, expid, args.priority, due_date, args.flush)
    if args.json:
        print_json({"rid": rid})
    else:
        print(f"RID: {rid}")


def _delete(args: argparse.Namespace, schedule: Client) -> None:
    for rid in args.rid:
        if args.graceful:
            schedule.request_termination(rid)
        else:
            schedule.delete(rid)


def _change(args: argparse.Namespace, schedule: Client) -> None:
    due_date = None
    if args.timed is not None:
        due_date = 0 if args.timed.lower() == "none" else parse_due_date(args.timed)
    arguments = parse_arguments(args.arguments) or None
    schedule.change(args.rid, priority=args.priority, due_date=due_date,
                    pipeline_name=args.pipeline, arguments=arguments, flush=args.flush)


def _hold(args: argparse.Namespace, schedule: Client) -> None:
    for pipeline in args.pipeline:
        schedule.hold(pipeline)


def _release(args: argparse.Namespace, schedule: Client) -> None:
    for pipeline in args.pipeline:
        schedule.release(pipeline)



class RunNotCompleted(Exception):
    """``wait``: the run ended other than completed (exit code 1)."""


# --- output -----------------------------------------------------------------------------

def _output(args: argparse.Namespace, obj: Any, formatter: Callable[[Any], str]) -> None:
    if args.json:
        print_json(obj)
    else:
        print(formatter(obj))


def _show(args: argparse.Namespace, master: Connection) -> None:
    _SHOW[args.what](args, master)


def _show_schedule(args: argparse.Namespace, master: Connection) -> None:
    if not args.watch:
        _output(args, master.rpc("schedule").get_status(), format_schedule)
        return
    clear = sys.stdout.isatty() and not args.json
    for status in master.notifier("schedule"):
        if args.json:
            print_json(status)
            continue
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(time.strftime("%H:%M:%S"), flush=True)
        print(format_schedule(status), flush=True)
        if not clear:
            print(flush=True)


def _show_history(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.rpc("history").list(args.limit), format_history)


def _show_datasets(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.snapshot("datasets"), format_datasets)


def _show_devices(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.rpc("device_db").get_device_db(), format_devices)


def _show_explist(args: argparse.Namespace, master: Connection) -> None:
    _output(args, {"explist": master.snapshot("explist"),
                   "status": master.snapshot("explist_status"),
                   "errors": master.snapshot("explist_errors")}, format_explist)


def _show_interactive(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.snapshot("interactive_args"), format_interactive)


Action = Callable[[argparse.Namespace, Connection], None]


def _follow(channel: str, formatter: Callable[[Any], str]) -> Action:
    def follow(args: argparse.Namespace, master: Connection) -> None:
        for message in master.broadcasts(channel):
            if args.json:
                print_json(message)
            else:
                print(formatter(message), flush=True)
    return follow


_SHOW: dict[str, Action] = {"schedule": _show_schedule, "history": _show_history, "datasets": _show_datasets,
         "devices": _show_devices, "interactive-args": _show_interactive,
         "explist": _show_explist,
         "log": _follow("log", format_log), "ccb": _follow("ccb", pyon.encode)}


def _history(args: argparse.Namespace, master: Connection) -> None:
    history = master.rpc("history")
    if args.rid is not None:
        _output(args, history.get(args.rid), format_record)
    else:
        _output(args, history.list(args.limit, args.before), format_history)


def _resubmit(args: argparse.Namespace, master: Connection) -> None:
    overrides: dict[str, Any] = {}
    if args.pipeline is not None:
        overrides["pipeline"] = args.pipeline
    if args.priority is not None:
        overrides["priority"] = args.priority
    if args.timed is not None:
        overrides["due_date"] = parse_due_date(args.timed)
    if args.flush:
        overrides["flush"] = True
    if args.revision is not None:
        overrides["repo_rev"] = args.revision
    if args.arguments:
        overrides["arguments"] = parse_arguments(args.arguments)
    rid = master.rpc("history").resubmit(args.rid, overrides)
    if args.json:
        print_json({"rid": rid})
    else:
        print(f"RID: {rid}")


def _wait(args: argparse.Namespace, master: Connection) -> None:
    timeout = None if args.timeout is None else args.timeout + 30
    record = master.rpc("history", timeout=timeout).wait(args.rid, args.timeout)
    if args.json:
        print_json(record)
    else:
        print(format_record(record))
    if record["status"] != "completed":
        raise RunNotCompleted(f"RID {args.rid} {record['status']}")


def _set_dataset(args: argparse.Namespace, master: Connection) -> None:
    try:
        value = pyon.decode(args.value)
    except ValueError as exc:
        raise UsageError(f"value {args.value!r} is not PYON: {exc}") from None
    master.rpc("dataset_db").set(args.key, value, args.persist)


def _del_dataset(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("dataset_db").delete(args.key)


def _scan_devices(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("device_db").scan()


def _scan_repository(args: argparse.Namespace, master: Connection) -> None:
    experiment_db = master.rpc("experiment_db", timeout=None)
    if args.run_async:
        experiment_db.scan_repository_async(args.revision)
    else:
        experiment_db.scan_repository(args.revision)


def _ls(args: argparse.Namespace, master: Connection) -> None:
    names = master.rpc("experiment_db").list_directory(args.directory)
    if args.json:
        print_json(names)
    else:
        for name in names:
            print(name)


def _terminate(args: argparse.Namespace, master: Connection) -> None:
    management = master.rpc("master_management")
    try:
        management.terminate()
    except (OSError, EOFError) as exc:
        if hasattr(exc, "remote_traceback"):
            raise
        # the master went away before its reply: that is what was asked


def _supply_interactive(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("interactive_arg_db").supply(args.rid, parse_arguments(args.arguments))


def _cancel_interactive(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("interactive_arg_db").cancel(args.rid)


def _on(target: str, action: Callable[[argparse.Namespace, Client], None]) -> Action:
    """An action taking the client of one RPC target."""
    return lambda args, master: action(args, master.rpc(target))


_ACTIONS: dict[str, Action] = {"submit": _on("schedule", _submit), "delete": _on("schedule", _delete),
            "change": _on("schedule", _change), "hold": _on("schedule", _hold),
            "release": _on("schedule", _release),
            "show": _show, "history": _history, "resubmit": _resubmit, "wait": _wait,
            "set-dataset": _set_dataset, "del-dataset": _del_dataset,
            "scan-devices": _scan_devices, "scan-repository": _scan_repository,
            "ls": _ls, "terminate": _terminate,
            "supply-interactive": _supply_interactive,
            "cancel-interactive": _cancel_interactive}


def _fail(message: object, code: int) -> NoReturn:
    print(f"labpipe-client: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run one client command; exits with the code of its outcome."""
    args = get_argparser().parse_args(argv)
    action = _ACTIONS[args.action]
    try:
        master = Connection(args)
    except ValueError as exc:  # bad --ssl files
        _fail(exc, EXIT_USAGE)
    try:
        action(args, master)
    except KeyboardInterrupt:
        pass
    except UsageError as exc:
        _fail(exc, EXIT_USAGE)
    except Unreachable as exc:
        _fail(exc, EXIT_UNREACHABLE)
    except RunNotCompleted as exc:
        _fail(exc, 1)
    except Exception as exc:
        if not hasattr(exc, "remote_traceback"):  # not the master's answer
            if isinstance(exc, BrokenPipeError):
                sys.stderr.close()  # our output was closed (piped into head): say nothing
                return
            if isinstance(exc, (OSError, EOFError)):
                _fail(f"lost the master: {getattr(exc, 'strerror', None) or exc}",
                      EXIT_UNREACHABLE)
        message = str(exc).strip().splitlines()
        _fail("refused: " + (message[0].strip("\x27\"") if message else type(exc).__name__),
              EXIT_REFUSED)
    finally:
        master.close()


if __name__ == "__main__":
    main()
