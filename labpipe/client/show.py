"""``show`` and ``history``: what the master holds, once or followed.

``show schedule`` reads the schedule (RPC) with the held pipelines (``pipelines``
notifier) and the interactive requests (``interactive_args``), both left out quietly
when the master has no such notifier (ARTIQ's). ``show schedule --watch`` and ``show
datasets --watch`` redraw on every change (at most ten times a second; with ``--json``
one line per change), ``show log`` and ``show ccb`` print each broadcast, ``show console
[RID] [--follow]`` runs' console lines (``console_view.py``). These monitors reconnect by themselves when the master restarts (``monitors.py``); Ctrl-C
ends them (exit code 0).
"""

import argparse
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from labpipe.client.connection import Connection, Unreachable
from labpipe.client.console_view import show_console
from labpipe.client.explist_view import format_explist
from labpipe.client.formatting import (format_datasets, format_devices, format_history,
                                       format_interactive, format_log, format_record,
                                       format_schedule, print_json)
from labpipe.client.monitors import Feeds, reconnecting
from labpipe.client.screen import Screen
from labpipe.protocol import pyon

__all__ = ["SHOW", "MONITORS", "history_command", "is_monitor"]

Action = Callable[[argparse.Namespace, Connection], None]

#: Shortest time between two redraws of a watched table.
REDRAW_SECONDS = 0.1

_CLEAR = "\x1b[H\x1b[2J"


def say(text: str) -> None:
    """A notice for the person watching (stderr: stdout stays the data)."""
    print(f"labpipe-client: {text}", file=sys.stderr, flush=True)


def _output(args: argparse.Namespace, obj: Any,
            formatter: Callable[[Any, Screen], str]) -> None:
    if args.json:
        print_json(obj)
    else:
        print(formatter(obj, Screen.of()), flush=True)


def _optional_snapshot(master: Connection, name: str) -> dict:
    try:
        return master.snapshot(name) or {}
    except Unreachable:
        return {}  # not a labpipe master, or an old one


def _show_schedule(args: argparse.Namespace, master: Connection) -> None:
    if args.watch:
        _watch(args, master, "schedule", _draw_schedule,
               optional=("pipelines", "interactive_args"))
        return
    status = master.rpc("schedule").get_status()
    if args.json:
        print_json(status)
        return
    state = {"schedule": status, "pipelines": _optional_snapshot(master, "pipelines"),
             "interactive_args": _optional_snapshot(master, "interactive_args")}
    print(_draw_schedule(state, Screen.of()), flush=True)


def _draw_schedule(state: dict[str, Any], screen: Screen) -> str:
    return format_schedule(state["schedule"], screen=screen,
                           pipelines=state.get("pipelines"),
                           waiting=state.get("interactive_args"))


def _draw_datasets(state: dict[str, Any], screen: Screen) -> str:
    return format_datasets(state["datasets"], screen)


def _watch(args: argparse.Namespace, master: Connection, name: str,
           draw: Callable[[dict[str, Any], Screen], str],
           optional: tuple[str, ...] = ()) -> None:
    """Follow the notifier name (and optional others) and redraw on every change."""
    where = master.where(master.settings.port_notify)
    if args.json:
        for content in reconnecting(lambda: master.notifier(name), where, say):
            print_json(content)
        return
    feeds = Feeds()
    lock = feeds.lock
    feeds.add(name, reconnecting(lambda: master.notifier(name, lock), where, say))
    for other in optional:
        feeds.add(other, reconnecting(functools.partial(master.notifier, other, lock),
                                      where, None), optional=True)
    state: dict[str, Any] = {}
    screen = Screen.of()
    while True:
        got = feeds.get()
        assert got is not None  # no timeout
        state[got[0]] = got[1]
        time.sleep(REDRAW_SECONDS)  # changes that come together: one redraw
        while feeds.pending():
            got = feeds.get()
            if got is not None:
                state[got[0]] = got[1]
        if name not in state:
            continue
        with lock:
            text = draw(state, screen)
        if screen.is_terminal:
            sys.stdout.write(_CLEAR)
        print(time.strftime("%H:%M:%S"), flush=True)
        print(text, flush=True)
        if not screen.is_terminal:
            print(flush=True)


def _show_history(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.rpc("history").list(args.limit), format_history)


def _show_datasets(args: argparse.Namespace, master: Connection) -> None:
    if args.watch:
        _watch(args, master, "datasets", _draw_datasets)
    else:
        _output(args, master.snapshot("datasets"), format_datasets)


def _show_devices(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.rpc("device_db").get_device_db(), format_devices)


def _show_explist(args: argparse.Namespace, master: Connection) -> None:
    _output(args, {"explist": master.snapshot("explist"),
                   "status": master.snapshot("explist_status"),
                   "errors": master.snapshot("explist_errors")}, format_explist)


def _show_interactive(args: argparse.Namespace, master: Connection) -> None:
    _output(args, master.snapshot("interactive_args"), format_interactive)


def _follow(channel: str, formatter: Callable[[Any, Screen], str]) -> Action:
    def follow(args: argparse.Namespace, master: Connection) -> None:
        where = master.where(master.settings.port_broadcast)
        screen = Screen.of()
        for message in reconnecting(lambda: master.broadcasts(channel), where, say):
            if args.json:
                print_json(message)
            else:
                print(formatter(message, screen), flush=True)
    return follow


SHOW: dict[str, Action] = {
    "schedule": _show_schedule, "history": _show_history, "datasets": _show_datasets,
    "devices": _show_devices, "interactive-args": _show_interactive,
    "explist": _show_explist, "log": _follow("log", format_log), "console": show_console,
    "ccb": _follow("ccb", lambda message, screen: pyon.encode(message))}

#: What ``show`` follows until Ctrl-C (always, or with ``--watch``).
MONITORS = {"log", "ccb"}


def is_monitor(args: argparse.Namespace) -> bool:
    """Whether the command runs until Ctrl-C (which then ends it successfully)."""
    return args.action == "show" and (args.what in MONITORS or bool(args.watch)
                                      or bool(getattr(args, "follow", False)))


def history_command(args: argparse.Namespace, master: Connection) -> None:
    """``history [RID]``: past runs, or one in full."""
    history = master.rpc("history")
    if args.rid is not None:
        _output(args, history.get(args.rid), format_record)
    else:
        _output(args, history.list(args.limit, args.before), format_history)
