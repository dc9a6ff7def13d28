"""``labpipe-client``: submit, delete and inspect runs of a labpipe (or ARTIQ) master.

Modelled on ``artiq_client``. Every error is one line on stderr and a distinct exit code:
0 success, 2 usage error, 3 the master refused the request, 4 the master is unreachable.
"""

import argparse
import logging
import sys
import time

from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client

__all__ = ["get_argparser", "main", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_UNREACHABLE"]

EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


def parse_arguments(pairs: list[str]) -> dict:
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
        return time.time() + float(text[1:])
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


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labpipe-client",
                                     description="labpipe command-line client")
    parser.add_argument("-s", "--server", default="127.0.0.1",
                        help="hostname or IP of the master (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3251,
                        help="control port of the master (default: %(default)s)")
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

    p = sub.add_parser("show", help="show the schedule")
    p.add_argument("what", choices=["schedule"], help="what to show")
    return parser


def _submit(args, schedule):
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
    print(f"RID: {rid}")


def _delete(args, schedule):
    for rid in args.rid:
        if args.graceful:
            schedule.request_termination(rid)
        else:
            schedule.delete(rid)


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h03m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_progress(progress: dict | None, width: int = 10) -> str:
    """``[####------] 40% 4/10 message`` (a count alone without a total)."""
    if not progress:
        return ""
    done, total = progress.get("done"), progress.get("total")
    message = str(progress.get("message") or "")[:30]
    if total:
        fraction = min(max(done / total, 0.0), 1.0)
        filled = int(fraction * width)
        text = f"[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%} {done:g}/{total:g}"
    else:
        text = f"{done:g} done"
    return f"{text} {message}".rstrip()


def _timing(run: dict, now: float) -> tuple[str, str]:
    """(elapsed, eta) cells of a running run (labpipe's ``started``/``eta`` keys)."""
    started, eta = run.get("started"), run.get("eta")
    if started is None or run.get("status") not in ("running", "paused"):
        return "", ""
    elapsed = format_duration(now - started)
    if eta is None:
        return elapsed, "?"
    clock = time.strftime("%H:%M:%S", time.localtime(eta))
    return elapsed, f"{clock} (in {format_duration(eta - now)})"


def format_schedule(status: dict, now: float | None = None) -> str:
    """The schedule as an aligned table, highest precedence first; progress, elapsed
    time and ETA for running runs (runs waiting for another pipeline's devices show
    ``blocked by RID ...``)."""
    if not status:
        return "Schedule is empty"
    now = time.time() if now is None else now
    header = ("RID", "Pipeline", "Status", "Prio", "Due date", "Revision", "File", "Class",
              "Progress", "Elapsed", "ETA")
    rows = []
    order = sorted(status.items(), key=lambda kv: (-kv[1]["priority"],
                                                   kv[1]["due_date"] or 0, kv[0]))
    for rid, run in order:
        expid = run["expid"]
        due = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["due_date"]))
               if run["due_date"] else "")
        progress = format_progress(run.get("progress"))
        if run.get("blocked_by"):
            progress = "blocked by RID " + ", ".join(str(b["rid"]) for b in run["blocked_by"])
        rows.append((str(rid), run["pipeline"], run["status"], str(run["priority"]), due,
                     str(expid.get("repo_rev") or ""),
                     expid.get("file") or "<content>", str(expid.get("class_name") or ""),
                     progress) + _timing(run, now))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + rows)


def _show(args, schedule):
    print(format_schedule(schedule.get_status()))


_ACTIONS = {"submit": (_submit, "schedule"), "delete": (_delete, "schedule"),
            "show": (_show, "schedule")}


def main(argv=None):
    """Run one client command; exits with the code of its outcome."""
    args = get_argparser().parse_args(argv)
    action, target = _ACTIONS[args.action]
    try:
        client = Client(args.server, args.port, target, timeout=30)
    except (OSError, EOFError) as exc:
        print(f"labpipe-client: cannot reach the master at {args.server}:{args.port}: "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    try:
        action(args, client)
    except UsageError as exc:
        print(f"labpipe-client: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (OSError, EOFError) as exc:
        print(f"labpipe-client: lost the master: {exc}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    except Exception as exc:
        message = str(exc).strip().splitlines()
        print(f"labpipe-client: refused: {message[0] if message else type(exc).__name__}",
              file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    finally:
        client.close_rpc()


if __name__ == "__main__":
    main()
