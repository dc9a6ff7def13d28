"""``show console [RID] [--follow]``: a run's console lines, or every run's.

A line shows as ``HH:MM:SS.mmm RID stream text`` (stream: ``stdout``, ``stderr``,
``log``, or ``fd`` for what was written to the file descriptors directly;
``docs/console.md``), coloured on a terminal (not with ``NO_COLOR``, not when piped);
with ``--json`` as one object per line, ``{"rid", "n", "time", "stream", "text"}`` (``n``:
the line's number in its run).

Without ``--follow``: what the master holds of the run (of every run whose console it
holds, oldest first, when no RID is given), then exit. With ``--follow``: that, then
every new line as the ``console`` broadcast brings it, until Ctrl-C; without a RID,
the runs that are in the schedule now in full, then every run's new lines.

Nothing twice, nothing lost: the follower keeps, per run, the number of the next line
it has to show. Each time the broadcast is (re)connected it asks ``console.text(rid,
since_line=N)`` for what it missed (once at once and once again ``SETTLE`` seconds
later, by when the master surely has the new subscription: lines broadcast before it
did are in that answer); a broadcast message that starts past N (lines sent while the
subscription was not yet in place) is filled the same way first; lines below N are
skipped. A master that restarted (kill -9, say) lost its memory of the runs that had
ended, but answers for them from their results files, numbered alike.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.text import Text

from labpipe.client.connection import Connection, Lost, Unreachable
from labpipe.client.formatting import print_json
from labpipe.client.monitors import Feeds, reconnecting
from labpipe.client.screen import Screen, render

__all__ = ["show_console", "format_console_line", "ConsoleFollower", "STREAM_STYLES"]

#: Colours of the streams on a terminal.
STREAM_STYLES = {"stdout": "green", "stderr": "red", "log": "yellow", "fd": "magenta"}
#: Seconds after a (re)connection when the missed lines are asked for a second time.
SETTLE = 0.5
#: A since_line past any line: ``text`` then answers only the run's ``next``.
_END = 2 ** 62


def format_console_line(rid: int, line: list[Any], screen: Screen | None = None) -> str:
    """One console line ``[time, text, stream]`` of run rid, for people."""
    created, text = float(line[0]), str(line[1])
    stream = str(line[2]) if len(line) > 2 else "stdout"
    stamp = (time.strftime("%H:%M:%S", time.localtime(created))
             + f".{int(created * 1000) % 1000:03d}")
    if screen is None or not screen.color:
        return f"{stamp} {rid} {stream:<6} {text}"
    shown = Text.assemble((stamp, "dim"), " ", (str(rid), "cyan"), " ",
                          (f"{stream:<6}", STREAM_STYLES.get(stream, "")), " ", text)
    return render(shown, Screen(width=max(screen.width, len(shown)), color=True))


class ConsoleFollower:
    """Shows runs' console lines once each, in order (see the module docstring).

    ``fetch(rid, since_line)`` is ``console.text``; ``emit(rid, n, line)`` shows line
    number n of run rid.
    """

    def __init__(self, fetch: Callable[[int, int], dict[str, Any]],
                 emit: Callable[[int, int, list[Any]], None],
                 say: Callable[[str], None] | None = None) -> None:
        self._fetch = fetch
        self._emit = emit
        self._say = say
        #: per run, the number of the next line to show
        self.shown: dict[int, int] = {}

    def skip_to_end(self, rid: int) -> None:
        """Show only lines run rid writes from now on."""
        self.shown[rid] = max(self.shown.get(rid, 0), int(self._fetch(rid, _END)["next"]))

    def catch_up(self, rid: int) -> None:
        """Show what the master holds of run rid past what was shown."""
        answer = self._fetch(rid, self.shown.get(rid, 0))
        self.show(rid, int(answer["first"]), answer["lines"])

    def show(self, rid: int, first: int, lines: list[Any]) -> None:
        """Show lines numbered first, first + 1... of run rid that were not shown."""
        start = self.shown.get(rid, 0)
        if first > start and self._say is not None:
            self._say(f"RID {rid}: lines {start} to {first - 1} are no longer held by "
                      "the master")
        for n, line in enumerate(lines, first):
            if n >= start:
                self._emit(rid, n, line)
                start = n + 1
        self.shown[rid] = max(start, self.shown.get(rid, 0))

    def on_broadcast(self, message: dict[str, Any]) -> None:
        """A ``console`` broadcast: missed lines first (a gap), then its own."""
        rid, first = int(message["rid"]), int(message["first"])
        if first > self.shown.get(rid, 0):
            self.catch_up(rid)
        self.show(rid, first, message["lines"])


def _say(text: str) -> None:
    print(f"labpipe-client: {text}", file=sys.stderr, flush=True)


def _printer(args: argparse.Namespace) -> Callable[[int, int, list[Any]], None]:
    if args.json:
        def emit_json(rid: int, n: int, line: list[Any]) -> None:
            print_json({"rid": rid, "n": n, "time": line[0], "text": line[1],
                        "stream": line[2] if len(line) > 2 else "stdout"})
        return emit_json
    screen = Screen.of()

    def emit(rid: int, n: int, line: list[Any]) -> None:
        print(format_console_line(rid, line, screen), flush=True)
    return emit


_CONNECTED = object()


def _with_marker(stream: Iterator[Any]) -> Iterator[Any]:
    return itertools.chain([_CONNECTED], stream)


def show_console(args: argparse.Namespace, master: Connection) -> None:
    """``show console [RID] [--follow]`` (the module docstring)."""
    rid: int | None = args.rid

    def fetch(run: int, since_line: int) -> dict[str, Any]:
        return master.rpc("console").text(run, since_line=since_line)

    follower = ConsoleFollower(fetch, _printer(args), _say)
    if not args.follow:
        for run in _runs(master, rid):
            follower.catch_up(run)
        return
    if rid is not None:
        fetch(rid, _END)  # an unknown RID: refused at once, before anything else
    _follow(args, master, follower, rid)


def _runs(master: Connection, rid: int | None) -> Iterable[int]:
    if rid is not None:
        return [rid]
    return sorted(master.rpc("console").runs())


def _follow(args: argparse.Namespace, master: Connection, follower: ConsoleFollower,
            rid: int | None) -> None:
    where = master.where(master.settings.port_broadcast)
    feeds = Feeds()
    feeds.add("console", reconnecting(lambda: _with_marker(master.broadcasts("console")),
                                      where, _say))
    first_connection = True
    due: list[float] = []  # when to ask for what was missed

    def catch_up() -> None:
        """Ask for what was missed; on trouble with the master, again later."""
        try:
            for run in _runs(master, rid) if rid is not None else _held(master, follower):
                follower.catch_up(run)
        except (Lost, Unreachable, OSError, EOFError):
            master.forget("console")
            due.append(time.monotonic() + SETTLE)
        except Exception as exc:
            if not hasattr(exc, "remote_traceback"):
                raise
            _say(f"the master refused console.text: {str(exc).splitlines()[0]}")

    while True:
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        got = feeds.get(timeout)
        if got is None or (due and min(due) <= time.monotonic()):
            due.clear()
            catch_up()
            if got is None:
                continue
        item = got[1]
        if item is _CONNECTED:
            master.forget("console")  # a new master, or an old connection gone stale
            if first_connection and rid is None:
                _start_all(master, follower)
            first_connection = False
            catch_up()
            due.append(time.monotonic() + SETTLE)
            continue
        if not isinstance(item, dict) or (rid is not None and item.get("rid") != rid):
            continue
        try:
            follower.on_broadcast(item)
        except (Lost, Unreachable, OSError, EOFError):
            master.forget("console")
            due.append(time.monotonic() + SETTLE)


def _held(master: Connection, follower: ConsoleFollower) -> list[int]:
    """Every run to catch up on: those the master holds, and the last ones shown."""
    return sorted(set(master.rpc("console").runs()) | set(sorted(follower.shown)[-64:]))


def _start_all(master: Connection, follower: ConsoleFollower) -> None:
    """Following every run: the runs in the schedule are shown from their first line,
    the ones that had ended before only from now on."""
    scheduled = set(master.rpc("schedule").get_status())
    for run in master.rpc("console").runs():
        if run not in scheduled:
            follower.skip_to_end(run)
