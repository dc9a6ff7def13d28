"""``labpipe-client call NAME ARGS...``: call a function of the lab's functions module.

Each ``ARG`` is a value (PYON, else the text itself, as ``submit`` reads values it has
no description for); ``KEY=VALUE``, KEY an identifier, is a keyword argument. The call
is a run of the pipeline's queue (``--pipeline``, default ``main``), or with
``--background`` starts at once beside it. The client waits for the result and prints
the returned value as PYON (``--json``: the task's whole record), or the one-line
error, exiting 1; ``--no-wait`` prints the task id instead (``docs/functions.md``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from labpipe.client.connection import Connection
from labpipe.client.errors import RunNotCompleted
from labpipe.client.formatting import print_json
from labpipe.client.values import parse_untyped
from labpipe.protocol import pyon

__all__ = ["add_parser", "call_command", "split_call_arguments"]


def add_parser(sub: Any) -> None:
    """The ``call`` subcommand of ``labpipe-client``."""
    p = sub.add_parser("call", help="call a function of the lab's functions module and "
                                    "print what it returns")
    p.add_argument("-p", "--pipeline", default="main",
                   help="pipeline (default: %(default)s)")
    p.add_argument("-b", "--background", action="store_true",
                   help="start at once, beside the pipeline's run (not in its queue)")
    p.add_argument("--no-wait", action="store_true",
                   help="print the task id and return without waiting for the result")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up waiting after this long (exit code 1)")
    p.add_argument("name", help="function name")
    p.add_argument("values", nargs="*", metavar="ARG",
                   help="positional values, or KEY=VALUE keyword values (PYON, else text)")


def split_call_arguments(values: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword values of the command line (see the module docstring)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if sep and key.isidentifier():
            kwargs[key] = parse_untyped(value)
        else:
            args.append(parse_untyped(text))
    return args, kwargs


def call_command(args: argparse.Namespace, master: Connection) -> None:
    """Run ``labpipe-client call``."""
    positional, keywords = split_call_arguments(args.values)
    schedule = master.rpc("schedule")
    task = schedule.call_function(args.pipeline, args.name, positional, keywords,
                                  args.background)
    if args.no_wait:
        print(task, flush=True)
        return
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    pause = 0.01
    while (status := schedule.task_status(task)) != "completed":
        if status == "not_found":
            raise RunNotCompleted(f"task {task} is not known to the master any more")
        if deadline is not None and time.monotonic() > deadline:
            raise RunNotCompleted(f"task {task} is still {status} after "
                                  f"{args.timeout} s")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)
    result = schedule.task_result(task)
    if args.json:
        print_json(result)
    elif result.get("success"):
        print(pyon.encode(result.get("return_value")), flush=True)
    if not result.get("success"):
        raise RunNotCompleted(result.get("msg") or f"{args.name} failed")
