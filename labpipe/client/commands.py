"""The client's commands that act on the master (everything but ``show`` and
``history``): each takes the parsed command line and the master's connection, prints
its outcome, and raises ``UsageError`` / ``RunNotCompleted`` for the outcomes that are
not the master's (``main.py`` turns them into exit codes).

Argument values (``NAME=VALUE``) are read by their argument's type (``values.py``)
with the descriptions the master has (``descriptions.py``): of the submitted file, of
the pending run being changed, of the past run being resubmitted, or of the
interactive request being answered.
"""

import argparse
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from labpipe.client.connection import Connection
from labpipe.client.descriptions import argument_descriptions
from labpipe.client.due_dates import describe_due_date, parse_due_date
from labpipe.client.errors import EXIT_REFUSED, RunNotCompleted, UsageError
from labpipe.client.formatting import format_progress, format_record, print_json
from labpipe.client.screen import Screen, Status, busy
from labpipe.client.values import parse_values
from labpipe.protocol import pyon

__all__ = ["COMMANDS", "typed_arguments", "due_date_of"]

Command = Callable[[argparse.Namespace, Connection], None]


def typed_arguments(pairs: list[str], procdescs: dict[str, dict] | None) -> dict[str, Any]:
    """The arguments of ``NAME=VALUE`` texts; UsageError (one line) for a value that
    does not parse by its argument's type."""
    try:
        return parse_values(pairs, procdescs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def due_date_of(text: str) -> float:
    """``-t``'s due date; UsageError when it cannot be read."""
    try:
        return parse_due_date(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _say_due(args: argparse.Namespace, due_date: float | None) -> None:
    """Tell a person which due date was understood (JSON output carries it instead)."""
    if due_date and not args.json:
        print(f"Due: {describe_due_date(due_date)}", flush=True)


def _print_rid(args: argparse.Namespace, rid: int, due_date: float | None) -> None:
    if args.json:
        print_json({"rid": rid} if due_date is None else {"rid": rid, "due_date": due_date})
    else:
        print(f"RID: {rid}")


def _submit(args: argparse.Namespace, master: Connection) -> None:
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
    expid.update({"log_level": logging.WARNING + 10 * (args.quiet - args.verbose),
                  "class_name": args.class_name})
    if args.repository:
        expid["repo_rev"] = args.revision
    procdescs = argument_descriptions(master, expid) if args.arguments else None
    expid["arguments"] = typed_arguments(args.arguments, procdescs)
    due_date = due_date_of(args.timed) if args.timed else None
    schedule = master.rpc("schedule")
    if args.dry_run:
        problems = schedule.validate(args.pipeline, expid)
        for problem in problems:
            print(f"problem: {problem}")
        if problems:
            sys.exit(EXIT_REFUSED)
        print("OK: the run would start")
        return
    _say_due(args, due_date)
    with contextlib.ExitStack() as spinner:
        if args.content:  # the master compiles the content in an examining process
            spinner.enter_context(busy(f"submitting the content of {args.file}"))
        if args.now:
            if due_date is not None or args.priority or args.flush or _place(args):
                raise UsageError("--now takes no due date, priority, flush or place")
            rid = schedule.execute_now(args.pipeline, expid, args.wait)
        elif args.wait:
            raise UsageError("--wait goes with --now")
        else:
            rid = schedule.submit(args.pipeline, expid, args.priority, due_date,
                                  args.flush, **_place(args))
    _print_rid(args, rid, due_date)


def _place(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a place in the queue given on the command line."""
    return {key: getattr(args, key) for key in ("before", "after", "pos")
            if getattr(args, key) is not None}


def _move(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("schedule").move_batch(args.rid, **_place(args))


def _clear(args: argparse.Namespace, master: Connection) -> None:
    rids = master.rpc("schedule").clear(args.pipeline)
    if args.json:
        print_json({"deleted": rids})
    else:
        print(f"deleted {len(rids)} run(s)" + (f": RIDs {', '.join(map(str, rids))}"
                                               if rids else ""))


def _stop_on_failure(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("schedule").set_stop_on_failure(args.pipeline, args.state == "on")


def _delete(args: argparse.Namespace, master: Connection) -> None:
    schedule = master.rpc("schedule")
    for rid in args.rid:
        if args.graceful:
            schedule.request_termination(rid)
        else:
            schedule.delete(rid)


def _change(args: argparse.Namespace, master: Connection) -> None:
    schedule = master.rpc("schedule")
    due_date = None
    if args.timed is not None:
        due_date = 0 if args.timed.strip().lower() == "none" else due_date_of(args.timed)
    arguments = None
    if args.arguments:
        run = schedule.get_status().get(args.rid)
        procdescs = argument_descriptions(master, run["expid"]) if run else None
        arguments = typed_arguments(args.arguments, procdescs)
    schedule.change(args.rid, priority=args.priority, due_date=due_date,
                    pipeline_name=args.pipeline, arguments=arguments, flush=args.flush)
    if due_date == 0 and not args.json:
        print("Due: none (the due date was removed)")
    else:
        _say_due(args, due_date)


def _hold(args: argparse.Namespace, master: Connection) -> None:
    for pipeline in args.pipeline:
        master.rpc("schedule").hold(pipeline, args.after_current)


def _release(args: argparse.Namespace, master: Connection) -> None:
    for pipeline in args.pipeline:
        master.rpc("schedule").release(pipeline)


def _resubmit(args: argparse.Namespace, master: Connection) -> None:
    history = master.rpc("history")
    overrides: dict[str, Any] = {}
    if args.pipeline is not None:
        overrides["pipeline"] = args.pipeline
    if args.priority is not None:
        overrides["priority"] = args.priority
    due_date = None
    if args.timed is not None:
        due_date = overrides["due_date"] = due_date_of(args.timed)
    if args.flush:
        overrides["flush"] = True
    if args.revision is not None:
        overrides["repo_rev"] = args.revision
    if args.arguments:
        procdescs = None
        try:
            record = history.get(args.rid)
        except Exception as exc:
            if not hasattr(exc, "remote_traceback"):
                raise
            record = None  # resubmit itself says why
        if record is not None:
            expid = dict(record["expid"])
            expid.setdefault("class_name", record.get("class_name"))
            if args.revision is not None and "repo_rev" in expid:
                expid["repo_rev"] = args.revision
            procdescs = argument_descriptions(master, expid)
        overrides["arguments"] = typed_arguments(args.arguments, procdescs)
    rid = history.resubmit(args.rid, overrides)
    _say_due(args, due_date)
    _print_rid(args, rid, due_date)


def _follow_run(master: Connection, rid: int, status: Status) -> None:
    """Keep the spinner's line on the run's status and progress (a daemon thread)."""
    def follow() -> None:
        try:
            for schedule in master.notifier("schedule"):
                run = schedule.get(rid)
                if run is None:
                    status.update(f"RID {rid} has left the schedule; waiting for its "
                                  "record")
                    continue
                progress = format_progress(run.get("progress"))
                status.update(f"waiting for RID {rid}: {run['status']} {progress}".rstrip())
        except Exception:
            pass  # the spinner only loses its details
    threading.Thread(target=follow, daemon=True, name="wait-progress").start()


def _wait(args: argparse.Namespace, master: Connection) -> None:
    timeout = None if args.timeout is None else args.timeout + 30
    history = master.rpc("history", timeout=timeout)
    with busy(f"waiting for RID {args.rid}") as status:
        if Screen.of(sys.stderr).is_terminal:
            _follow_run(master, args.rid, status)
        record = history.wait(args.rid, args.timeout)
    if args.json:
        print_json(record)
    else:
        print(format_record(record, Screen.of()))
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
        return
    with busy("rescanning the repository (examining every experiment file)"):
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
    request = (master.snapshot("interactive_args") or {}).get(args.rid)
    procdescs = None
    if isinstance(request, dict):
        procdescs = {entry[0]: entry[1] for entry in request.get("arglist_desc") or []
                     if isinstance(entry, (list, tuple)) and len(entry) > 1
                     and isinstance(entry[1], dict)}
    arguments = typed_arguments(args.arguments, procdescs)
    master.rpc("interactive_arg_db").supply(args.rid, arguments)


def _cancel_interactive(args: argparse.Namespace, master: Connection) -> None:
    master.rpc("interactive_arg_db").cancel(args.rid)


def _print_lock(args: argparse.Namespace, info: dict) -> None:
    if args.json:
        print_json(info)
    elif not info.get("locked"):
        print("Not locked")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["time"])) \
            if isinstance(info.get("time"), (int, float)) else "an unknown time"
        print(f"Locked ({', '.join(info['scope'])}) by {info.get('user') or 'an unnamed user'}"
              f" since {when}" + (f": {info['note']}" if info.get("note") else ""))


def _lock(args: argparse.Namespace, master: Connection) -> None:
    scope = tuple(args.scope) if args.scope else ("queue", "environment")
    _print_lock(args, master.rpc("lock").lock(args.key, scope, args.note))


def _unlock(args: argparse.Namespace, master: Connection) -> None:
    _print_lock(args, master.rpc("lock").unlock(args.key))


def _lock_info(args: argparse.Namespace, master: Connection) -> None:
    _print_lock(args, master.rpc("lock").info())


COMMANDS: dict[str, Command] = {
    "lock": _lock, "unlock": _unlock, "lock-info": _lock_info,
    "submit": _submit, "delete": _delete, "change": _change, "hold": _hold,
    "move": _move, "clear": _clear, "stop-on-failure": _stop_on_failure,
    "release": _release, "resubmit": _resubmit, "wait": _wait,
    "set-dataset": _set_dataset, "del-dataset": _del_dataset,
    "scan-devices": _scan_devices, "scan-repository": _scan_repository, "ls": _ls,
    "terminate": _terminate, "supply-interactive": _supply_interactive,
    "cancel-interactive": _cancel_interactive}
