"""How ``labpipe-client`` shows things to people: tables that fit the screen
(``tables.fit_table``, drawn by ``rich``), durations, progress bars, log lines; and
``--json`` output for scripts (keys as strings, tuples as lists, bytes as base64).

Every ``format_*`` function returns text for a ``screen.Screen`` (by default plain and
of unlimited width); the experiment list is in ``explist_view.py``.

The schedule (``format_schedule``): highest precedence first (a run of execute_now,
then priority, then due date, then queue position — the RID unless moved — then RID);
``Queue`` is a run's place in its pipeline's queue (1 goes next; ``now`` for a run of
execute_now), among the runs that have not started running. A running run shows its progress bar, elapsed time and ETA (labpipe's
``progress``, ``started`` and ``eta`` keys; an ETA that has passed shows how late it
is, never "in 0s"); a run waiting for another pipeline's devices ``blocked by RID
...``; a run waiting for interactive arguments the title it asks under. Held
pipelines are named above the table and their pending runs say ``(held)``. Revisions
are cut to 10 characters, columns empty in every row are left out, and on a narrow
terminal the least useful columns go first (``tables.fit_table``). An ARTIQ master's
entries (no labpipe keys) show too.
"""

import base64
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from rich.text import Text

from labpipe.client.screen import Screen, render
from labpipe.client.tables import Cell, Column, fit_table
from labpipe.protocol import pyon

__all__ = ["format_duration", "format_progress", "jsonable", "print_json", "table_text",
           "format_history", "format_record", "format_datasets", "format_devices",
           "format_interactive", "format_log", "short_revision", "STATUS_STYLES",
           "format_schedule", "SCHEDULE_COLUMNS"]

#: Colours of run statuses (schedule and history).
STATUS_STYLES = {"running": "green", "paused": "yellow", "preparing": "cyan",
                 "prepare_done": "cyan", "flushing": "magenta", "deleting": "red",
                 "analyzing": "blue", "run_done": "blue", "analyze_done": "blue",
                 "completed": "green", "failed": "bold red", "terminated": "yellow",
                 "deleted": "yellow", "interrupted": "magenta"}

_LEVEL_STYLES = {logging.DEBUG: "dim", logging.WARNING: "yellow", logging.ERROR: "red",
                 logging.CRITICAL: "bold red"}


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


def short_revision(revision: Any) -> str:
    """A revision as shown in tables: a full commit id cut to 10 characters."""
    text = "" if revision is None else str(revision)
    if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
        return text[:10]
    return text


def jsonable(obj: Any) -> Any:
    """obj as plain JSON data: dict keys as strings, tuples and sets as lists, bytes as
    base64, numpy values as lists and numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def print_json(obj: Any) -> None:
    """obj as one line of JSON on stdout."""
    print(json.dumps(jsonable(obj), sort_keys=True), flush=True)


def table_text(columns: Sequence[Column], rows: Sequence[Sequence[Cell | str]],
               screen: Screen | None = None) -> str:
    """A table fitted to the screen, as text."""
    screen = screen or Screen()
    return render(fit_table(columns, rows, screen.width), screen)


def _clock(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _short(value: Any, width: int = 50) -> str:
    text = value if isinstance(value, str) else pyon.encode(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _took(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 10 else format_duration(seconds)


def _status(status: str) -> Cell:
    return Cell(status, STATUS_STYLES.get(status, ""))


def format_history(records: list, screen: Screen | None = None) -> str:
    """History records as a table, in the order given."""
    if not records:
        return "History is empty"
    rows = []
    for r in records:
        expid = r["expid"]
        stages = r.get("stages") or {}
        start = min((s["start"] for s in stages.values()), default=None)
        duration = "" if start is None else _took(r["ended"] - start)
        rows.append((str(r["rid"]), _status(r["status"]), r["pipeline"],
                     str(r["priority"]), _clock(r["submitted"]), duration,
                     expid.get("file") or "<content>",
                     r.get("class_name") or expid.get("class_name") or "",
                     Cell(_short(r.get("error") or "", 200), "red")))
    columns = (Column("RID", justify="right"), Column("Status"),
               Column("Pipeline", 1, min_width=6), Column("Prio", 4, justify="right"),
               Column("Submitted", 3), Column("Took", 2, justify="right"),
               Column("File", 1, min_width=12, elide="left"),
               Column("Class", 2, min_width=8), Column("Error", 1, min_width=12))
    return table_text(columns, rows, screen)


def format_record(r: dict, screen: Screen | None = None) -> str:
    """One history record in full."""
    expid = r["expid"]
    lines = [f"RID:        {r['rid']}", f"Status:     {r['status']}",
             f"Pipeline:   {r['pipeline']}", f"Priority:   {r['priority']}",
             f"File:       {expid.get('file') or '<content>'}",
             f"Class:      {r.get('class_name') or expid.get('class_name') or ''}",
             f"Arguments:  {pyon.encode(expid.get('arguments', {}))}",
             f"Revision:   {r.get('repo_rev') or ''}",
             f"Submitted:  {_clock(r['submitted'])}"]
    if r.get("due_date"):
        lines.append(f"Due date:   {_clock(r['due_date'])}")
    for stage, times in sorted((r.get("stages") or {}).items(),
                               key=lambda kv: kv[1]["start"]):
        lines.append(f"  {stage + ':':<13} {_clock(times['start'])} "
                     f"({_took(times.get('spent', times['end'] - times['start']))})")
    lines.append(f"Ended:      {_clock(r.get('ended'))}")
    lines.append(f"Results:    {r.get('results') or ''}")
    if r.get("error"):
        lines.append(f"Error:      {r['error']}")
    text = Text("\n".join(lines))
    text.highlight_regex(r"(?m)(?<=^Status:     )\w+", STATUS_STYLES.get(r["status"], ""))
    text.highlight_regex(r"(?m)^Error:.*", "red")
    # a record is read whole: its lines wrap at the screen's edge rather than being cut
    return render(text, screen)


def format_datasets(datasets: dict, screen: Screen | None = None) -> str:
    """The datasets as a table of key, persistence, value and unit."""
    if not datasets:
        return "No datasets"
    rows = [(key, "yes" if persist else "no", _short(value, 60),
             (metadata or {}).get("unit", ""))
            for key, (persist, value, metadata) in sorted(datasets.items())]
    columns = (Column("Key", 0, min_width=16, elide="left"), Column("Persist", 2),
               Column("Value", 0, min_width=12), Column("Unit", 1, keep_empty=True))
    return table_text(columns, rows, screen)


def format_devices(ddb: dict, screen: Screen | None = None) -> str:
    """The device database: key, type and the details of each entry."""
    if not ddb:
        return "No devices"
    rows = []
    for key, desc in sorted(ddb.items()):
        if isinstance(desc, str):
            rows.append((key, "alias", "-> " + desc))
        elif desc.get("type") == "local":
            rows.append((key, "local", f"{desc.get('module')}.{desc.get('class')}"))
        elif desc.get("type") == "controller":
            rows.append((key, "controller", f"{desc.get('host')}:{desc.get('port')}"))
        else:
            rows.append((key, str(desc.get("type")), ""))
    columns = (Column("Key", min_width=12), Column("Type"),
               Column("Details", min_width=12, keep_empty=True))
    return table_text(columns, rows, screen)


def format_interactive(requests: dict, screen: Screen | None = None) -> str:
    """The runs waiting for interactive arguments, and what they ask."""
    if not requests:
        return "No run waits for interactive arguments"
    rows = [(str(rid), req["title"], ", ".join(d[0] for d in req["arglist_desc"]))
            for rid, req in sorted(requests.items())]
    columns = (Column("RID", justify="right"), Column("Title", min_width=10),
               Column("Arguments", min_width=12))
    return table_text(columns, rows, screen)


def format_log(message: tuple[int, str, float, str], screen: Screen | None = None) -> str:
    """One log broadcast as ``HH:MM:SS LEVEL:source:text``."""
    levelno, source, created, text = message
    line = (f"{time.strftime('%H:%M:%S', time.localtime(created))} "
            f"{logging.getLevelName(levelno)}:{source}:{text}")
    if screen is None or not screen.color:
        return line
    style = _LEVEL_STYLES.get(levelno, "")
    return render(Text(line, style=style), Screen(width=max(screen.width, len(line)),
                                                  color=True))


# --- the schedule ---------------------------------------------------------------------

#: Dropped first on a narrow screen: Revision, Elapsed, Due date, Prio, ETA, Class.
SCHEDULE_COLUMNS = (
    Column("RID", justify="right"), Column("Pipeline", 1, min_width=8),
    Column("Queue", 3, justify="right"),
    Column("Status"), Column("Prio", 4, justify="right", keep_empty=True),
    Column("Due date", 4), Column("Revision", 5), Column("File", 1, min_width=12,
                                                         elide="left"),
    Column("Class", 2, min_width=8), Column("Progress", 1, min_width=18),
    Column("Elapsed", 4, justify="right"), Column("ETA", 3))


def _timing(run: dict, now: float) -> tuple[str, str]:
    """(elapsed, eta) cells of a running run (labpipe's ``started``/``eta`` keys)."""
    started, eta = run.get("started"), run.get("eta")
    if started is None or run.get("status") not in ("running", "paused"):
        return "", ""
    elapsed = format_duration(now - started)
    if eta is None:
        return elapsed, "?"
    clock = time.strftime("%H:%M:%S", time.localtime(eta))
    if eta - now >= 0.5:
        return elapsed, f"{clock} (in {format_duration(eta - now)})"
    return elapsed, f"{clock} (late {format_duration(now - eta)})"


def _due(due_date: float | None, now: float) -> str:
    if not due_date:
        return ""
    local, today = time.localtime(due_date), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


#: Statuses of runs in their pipeline's queue (not started running).
_QUEUED = ("pending", "flushing", "preparing", "prepare_done")


def _precedence(item: tuple[Any, dict]) -> tuple:
    """Sort key of a schedule entry, first to go first (the master's precedence)."""
    rid, run = item
    position = run.get("queue_position")
    return (not run.get("immediate", False), -run["priority"], run["due_date"] or 0,
            rid if position is None else position, rid)


def _places(order: list[tuple[Any, dict]]) -> dict[Any, str]:
    """The Queue cell of each run: its place among its pipeline's queued runs."""
    places: dict[Any, str] = {}
    counts: dict[str, int] = {}
    for rid, run in order:
        if run.get("immediate"):
            places[rid] = "now"
        elif run["status"] in _QUEUED:
            counts[run["pipeline"]] = counts.get(run["pipeline"], 0) + 1
            places[rid] = str(counts[run["pipeline"]])
    return places


def _row(rid: Any, run: dict, now: float, held: set[str], waiting: dict,
         place: str = "") -> list[Cell]:
    expid = run["expid"]
    status = run["status"]
    status_cell = Cell(status, STATUS_STYLES.get(status, ""))
    if status == "pending" and run["pipeline"] in held:
        status_cell = Cell("pending (held)", "yellow")
    progress = Cell(format_progress(run.get("progress")))
    if run.get("blocked_by"):
        progress = Cell("blocked by RID " + ", ".join(str(b["rid"])
                                                      for b in run["blocked_by"]),
                        "yellow")
    request = waiting.get(rid)
    if request is not None:
        progress = Cell(f"waits for input: {request.get('title') or 'arguments'}",
                        "bold yellow")
    elapsed, eta = _timing(run, now)
    return [Cell(str(rid)), Cell(run["pipeline"]), Cell(place), status_cell,
            Cell(str(run["priority"])),
            Cell(_due(run.get("due_date"), now)),
            Cell(short_revision(expid.get("repo_rev"))),
            Cell(expid.get("file") or "<content>"), Cell(str(expid.get("class_name") or "")),
            progress, Cell(elapsed), Cell(eta, "dim" if "late" in eta else "")]


def format_schedule(status: dict, now: float | None = None, *,
                    screen: Screen | None = None, pipelines: dict | None = None,
                    waiting: dict | None = None) -> str:
    """The schedule (see the module docstring). ``pipelines``: the ``pipelines``
    notifier (held pipelines), ``waiting``: the ``interactive_args`` notifier."""
    now = time.time() if now is None else now
    held = {name for name, state in (pipelines or {}).items() if state.get("held")}
    stopping = {name for name, state in (pipelines or {}).items()
                if state.get("stop_pending")}
    waiting = waiting or {}
    lines = []
    if held:
        lines.append(render(Text("Held pipelines: " + ", ".join(sorted(held)),
                                 style="yellow"), screen))
    if stopping:
        lines.append(render(Text("Held after their running run: "
                                 + ", ".join(sorted(stopping)), style="yellow"), screen))
    held |= stopping
    if not status:
        lines.append("Schedule is empty")
        return "\n".join(lines)
    order = sorted(status.items(), key=_precedence)
    places = _places(order)
    rows = [_row(rid, run, now, held, waiting, places.get(rid, "")) for rid, run in order]
    lines.append(table_text(SCHEDULE_COLUMNS, rows, screen))
    asking = [rid for rid, _ in order if rid in waiting]
    if asking:
        lines.append(render(Text(
            f"RID {', '.join(str(r) for r in asking)} "
            f"{'waits' if len(asking) == 1 else 'wait'} for interactive arguments: see "
            "show interactive-args, answer with supply-interactive RID NAME=VALUE",
            style="yellow"), screen))
    return "\n".join(lines)
