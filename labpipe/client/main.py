"""``labpipe-client``: submit, delete and inspect runs of a labpipe (or ARTIQ) master.

Modelled on ``artiq_client``. Every error is one line on stderr and a distinct exit
code: 0 success, 1 a local error (a bug in the client: ``-v`` prints its traceback),
``wait`` on a run that did not complete or ``call`` of a function that failed, 2 usage
error, 3 the master refused the request, 4 the master is unreachable, 130 interrupted
(Ctrl-C; it ends monitors such as ``show log`` with 0). People get tables that fit their terminal; ``--json`` prints JSON
for scripts (dict keys as strings, tuples as lists).

Where the master is: ``settings.py`` (flags, environment, ``labpipe.toml``,
``~/.config/labpipe/client.toml``). The commands are in ``commands.py`` and
``show.py``; argument values are read by their type (``values.py``).
"""

import argparse
import math
import sys
import traceback
from typing import NoReturn

from labpipe.client.call import add_parser as add_call_parser
from labpipe.client.call import call_command
from labpipe.client.commands import COMMANDS
from labpipe.client.connection import Connection, Lost, Unreachable
from labpipe.client.due_dates import DUE_DATE_FORMS
from labpipe.client.errors import (EXIT_BUG, EXIT_INTERRUPTED, EXIT_NOT_COMPLETED,
                                   EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE,
                                   RunNotCompleted, UsageError)
from labpipe.client.settings import resolve
from labpipe.client.show import SHOW, history_command, is_monitor
from labpipe.client.values import parse_untyped, split_pairs
from labpipe.protocol.rpc import IncompatibleServer

__all__ = ["get_argparser", "main", "parse_arguments", "UsageError", "EXIT_USAGE",
           "EXIT_REFUSED", "EXIT_UNREACHABLE"]

_EPILOG = """\
argument values (NAME=VALUE) are read by the argument's type, which the master knows:
  booleans   true/false, yes/no, on/off, 1/0
  numbers    with the argument's unit or another prefix of it: freq=2.5MHz, delay=20ms
             (a plain number only where the argument is not in scaled units)
  choices    one of the choices: mode=fast
  strings    as typed, no quotes needed: note=aligned, "note=new alignment"
  scans      start:stop:npoints (-2mm:2mm:21), center±half/step or center+-half/step
             (10MHz+-1MHz/0.5MHz: 9 to 11 MHz in steps of 0.5 MHz), a,b,c, or one value
  PYON       for PYONValue arguments, and for any argument the master cannot describe

exit codes: 0 success, 1 a local error (-v: traceback), wait on a run that did not
complete or call of a function that failed, 2 usage, 3 refused by the master, 4 master unreachable, 130 Ctrl-C

the master's address and ports: flags, then $LABPIPE_SERVER, $LABPIPE_PORT_CONTROL,
$LABPIPE_PORT_NOTIFY, $LABPIPE_PORT_BROADCAST, then labpipe.toml ([client], [ports],
[client.tls]) in this folder or above, then ~/.config/labpipe/client.toml
"""


def parse_arguments(pairs: list[str]) -> dict:
    """``NAME=VALUE`` pairs read without descriptions (PYON, else the text itself);
    UsageError for a pair that is not NAME=VALUE (``labpipe-run`` uses it)."""
    try:
        return {name: parse_untyped(text) for name, text in split_pairs(pairs)}
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _seconds(text: str) -> float:
    """argparse type: a duration in seconds, finite and not negative."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _place_arguments(p: argparse.ArgumentParser, title: str, required: bool = False) -> None:
    """--before/--after RID, --front/--back, --pos N: a place in a pipeline's queue."""
    group = p.add_argument_group(title).add_mutually_exclusive_group(required=required)
    group.add_argument("--before", type=int, metavar="RID", help="right before this run")
    group.add_argument("--after", type=int, metavar="RID", help="right after this run")
    group.add_argument("--front", action="store_const", const="front", dest="pos",
                       help="before every run of the pipeline")
    group.add_argument("--back", action="store_const", const="back", dest="pos",
                       help="after every run of the pipeline")
    group.add_argument("--pos", type=int, metavar="N",
                       help="at index N of the pipeline's queue (0: first; -1: last)")


def get_argparser() -> argparse.ArgumentParser:
    """The command line of ``labpipe-client``."""
    parser = argparse.ArgumentParser(
        prog="labpipe-client", description="labpipe command-line client",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--server", default=None,
                        help="hostname or IP of the master (default: $LABPIPE_SERVER, "
                             "labpipe.toml [client] server, or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="control port of the master (default: "
                             "$LABPIPE_PORT_CONTROL, labpipe.toml [ports], or 3251)")
    parser.add_argument("--port-notify", type=int, default=None, metavar="PORT",
                        help="notify port of the master (default: $LABPIPE_PORT_NOTIFY, "
                             "labpipe.toml [ports], or 3250)")
    parser.add_argument("--port-broadcast", type=int, default=None, metavar="PORT",
                        help="broadcast port of the master (default: "
                             "$LABPIPE_PORT_BROADCAST, labpipe.toml [ports], or 1067)")
    parser.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                        help="connect with mutual TLS (a master started with --ssl): "
                             "CERT and KEY are this client's certificate and key, PEER "
                             "the master's certificate (default: labpipe.toml "
                             "[client.tls])")
    parser.add_argument("--lock-key", default=None, metavar="KEY",
                        help="the key of the master's lock, sent with every call")
    parser.add_argument("--user", default=None, help="your user name (kept in history)")
    parser.add_argument("--group", default=None,
                        help="your group, for the lab's permissions (with TLS the "
                             "certificate says)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (one document, or one line per update) for scripts")
    parser.add_argument("-v", "--verbose", action="store_true", dest="traceback",
                        help="on an error of the client itself, print its traceback")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("submit", help="submit an experiment")
    p.add_argument("-p", "--pipeline", default="main", help="pipeline (default: %(default)s)")
    p.add_argument("-P", "--priority", type=int, default=0, help="priority (higher first)")
    p.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                   help=f"due date: {DUE_DATE_FORMS}")
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
    p.add_argument("--now", action="store_true",
                   help="run it at once, ahead of the pipeline's queue, held or not "
                        "(refused while a run of the pipeline runs, unless --wait)")
    p.add_argument("--wait", action="store_true",
                   help="with --now: start once the pipeline's running run is done")
    _place_arguments(p, "place it in the pipeline's queue")
    p.add_argument("-v", "--verbose", action="count", default=0, help="worker log level down")
    p.add_argument("-q", "--quiet", action="count", default=0, help="worker log level up")
    p.add_argument("file", help="experiment file")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="experiment arguments, read by their type (labpipe-client --help)")

    add_call_parser(sub)

    p = sub.add_parser("delete", help="delete a run")
    p.add_argument("-g", "--graceful", action="store_true",
                   help="request termination instead of deleting")
    p.add_argument("rid", type=int, nargs="+", help="run id(s)")

    p = sub.add_parser("change", help="edit a pending run (priority, due date, "
                                      "pipeline, flush, arguments merged in)")
    p.add_argument("rid", type=int, help="run id")
    p.add_argument("-P", "--priority", type=int, default=None, help="new priority")
    p.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                   help=f"new due date: {DUE_DATE_FORMS}, or 'none' to remove it")
    p.add_argument("-p", "--pipeline", default=None, help="move it to this pipeline")
    p.add_argument("-f", "--flush", default=None, action=argparse.BooleanOptionalAction,
                   help="flush (or not) before it prepares")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="arguments to change, read by their type")

    p = sub.add_parser("move", help="move pending runs in their pipeline's queue "
                                    "(priority and due date still go first)")
    p.add_argument("rid", type=int, nargs="+", help="run id(s), moved as a block in "
                                                    "this order")
    _place_arguments(p, "where to", required=True)

    p = sub.add_parser("clear", help="delete every run of a pipeline that has not "
                                     "started running")
    p.add_argument("pipeline", help="pipeline name")

    p = sub.add_parser("hold", help="hold pipelines: they start no new run")
    p.add_argument("pipeline", nargs="+", help="pipeline name(s)")
    p.add_argument("--after-current", action="store_true",
                   help="let the running run finish first (shown as stop pending)")
    p = sub.add_parser("release", help="release held pipelines (or cancel a pending hold)")
    p.add_argument("pipeline", nargs="+", help="pipeline name(s)")
    p = sub.add_parser("stop-on-failure", help="hold a pipeline when one of its runs "
                                               "fails (on), or not (off, the default)")
    p.add_argument("pipeline", help="pipeline name")
    p.add_argument("state", choices=("on", "off"))

    p = sub.add_parser("lock", help="lock the queue and/or the environment with a key")
    p.add_argument("key", help="the key (give it as --lock-key to pass the lock)")
    p.add_argument("--scope", action="append", choices=("queue", "environment"),
                   default=None, help="what to lock (repeatable; default: both)")
    p.add_argument("--note", default=None, help="why (shown in every refusal)")
    p = sub.add_parser("unlock", help="unlock with the lock's key or the emergency key")
    p.add_argument("key", help="the lock's key or the lab's emergency key")
    sub.add_parser("lock-info", help="whether the master is locked, by whom, why")

    p = sub.add_parser("show", help="show the schedule, history, datasets, devices, "
                                    "interactive arguments, or follow the log or ccb")
    p.add_argument("what", choices=sorted(SHOW), help="what to show")
    p.add_argument("-w", "--watch", action="store_true",
                   help="schedule, datasets: keep showing them as they change, across "
                        "master restarts (Ctrl-C ends)")
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
                   help=f"due date: {DUE_DATE_FORMS}")
    p.add_argument("-f", "--flush", action="store_true",
                   help="flush (wait for runs of this priority or higher)")
    p.add_argument("-r", "--revision", default=None, help="another repository revision")
    p.add_argument("rid", type=int, help="the run to submit again")
    p.add_argument("arguments", nargs="*", metavar="NAME=VALUE",
                   help="arguments to change, read by their type")

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
                   help="argument values, read by their type")

    p = sub.add_parser("cancel-interactive", help="cancel a run's interactive request")
    p.add_argument("rid", type=int, help="run id")
    return parser


def _fail(message: object, code: int) -> NoReturn:
    print(f"labpipe-client: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip("\x27\"") if lines else type(exc).__name__


def _run(args: argparse.Namespace, master: Connection) -> None:
    if args.action == "show":
        SHOW[args.what](args, master)
    elif args.action == "history":
        history_command(args, master)
    elif args.action == "call":
        call_command(args, master)
    else:
        COMMANDS[args.action](args, master)


def main(argv: list[str] | None = None) -> None:
    """Run one client command; exits with the code of its outcome."""
    args = get_argparser().parse_args(argv)
    try:
        master = Connection(resolve(args))
    except ValueError as exc:  # bad --ssl files, a bad variable or labpipe.toml
        _fail(exc, EXIT_USAGE)
    try:
        _run(args, master)
    except KeyboardInterrupt:
        if not is_monitor(args):  # a monitor runs until Ctrl-C: that is its end
            _fail("interrupted", EXIT_INTERRUPTED)
    except UsageError as exc:
        _fail(exc, EXIT_USAGE)
    except (Unreachable, IncompatibleServer) as exc:
        _fail(exc, EXIT_UNREACHABLE)
    except RunNotCompleted as exc:
        _fail(exc, EXIT_NOT_COMPLETED)
    except Exception as exc:
        if hasattr(exc, "remote_traceback"):  # the master's answer
            _fail(f"refused: {_first_line(exc)}", EXIT_REFUSED)
        if isinstance(exc, BrokenPipeError):
            sys.stderr.close()  # our output was closed (piped into head): say nothing
            return
        if isinstance(exc, (Lost, OSError, EOFError)):
            _fail(f"lost the master: {getattr(exc, 'strerror', None) or exc}",
                  EXIT_UNREACHABLE)
        # anything else is a bug of this client
        if args.traceback:
            traceback.print_exc()
        hint = "" if args.traceback else " (run with -v for the traceback)"
        _fail(f"internal error: {type(exc).__name__}: {_first_line(exc)}{hint}", EXIT_BUG)
    finally:
        master.close()


if __name__ == "__main__":
    main()
