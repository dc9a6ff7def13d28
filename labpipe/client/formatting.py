"""How ``labpipe-client`` shows things to people: aligned tables, durations, progress
bars, log lines; and ``--json`` output for scripts (keys as strings, tuples as lists,
bytes as base64)."""

import base64
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from labpipe.protocol import pyon

__all__ = ['format_duration', 'format_progress', 'format_schedule', 'jsonable', 'print_json', 'format_table', 'format_history', 'format_record', 'format_datasets', 'format_explist', 'format_devices', 'format_interactive', 'format_log']


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
    return format_table(header, rows)


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
    print(json.dumps(jsonable(obj), sort_keys=True), flush=True)


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows of strings as columns aligned on the widest cell."""
    cells = [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells + [tuple(header)]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [tuple(header)] + cells)


def _clock(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _short(value: Any, width: int = 50) -> str:
    text = value if isinstance(value, str) else pyon.encode(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _took(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 10 else format_duration(seconds)


def format_history(records: list) -> str:
    """History records as a table, in the order given."""
    if not records:
        return "History is empty"
    rows = []
    for r in records:
        expid = r["expid"]
        stages = r.get("stages") or {}
        start = min((s["start"] for s in stages.values()), default=None)
        duration = "" if start is None else _took(r["ended"] - start)
        rows.append((r["rid"], r["status"], r["pipeline"], r["priority"],
                     _clock(r["submitted"]), duration, expid.get("file") or "<content>",
                     r.get("class_name") or expid.get("class_name") or "",
                     _short(r.get("error") or "", 40)))
    return format_table(("RID", "Status", "Pipeline", "Prio", "Submitted", "Took", "File",
                         "Class", "Error"), rows)


def format_record(r: dict) -> str:
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
    return "\n".join(lines)


def format_datasets(datasets: dict) -> str:
    if not datasets:
        return "No datasets"
    rows = [(key, "yes" if persist else "no", _short(value, 60),
             (metadata or {}).get("unit", ""))
            for key, (persist, value, metadata) in sorted(datasets.items())]
    return format_table(("Key", "Persist", "Value", "Unit"), rows)


def format_explist(snapshot: dict) -> str:
    """The experiment list, its revision, and the files that could not be examined."""
    explist, status, errors = snapshot["explist"], snapshot["status"], snapshot["errors"]
    lines = [f"Revision: {status.get('cur_rev')}"
             + ("  (scanning)" if status.get("scanning") else "")]
    if explist:
        rows = [(name, entry["file"], entry["class_name"], ", ".join(entry["arginfo"]))
                for name, entry in sorted(explist.items())]
        lines.append(format_table(("Experiment", "File", "Class", "Arguments"), rows))
    else:
        lines.append("No experiments")
    for file, reason in sorted(errors.items()):
        lines.append(f"skipped {file}: {reason}")
    return "\n".join(lines)


def format_devices(ddb: dict) -> str:
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
    return format_table(("Key", "Type", "Details"), rows)


def format_interactive(requests: dict) -> str:
    if not requests:
        return "No run waits for interactive arguments"
    rows = [(rid, req["title"], ", ".join(d[0] for d in req["arglist_desc"]))
            for rid, req in sorted(requests.items())]
    return format_table(("RID", "Title", "Arguments"), rows)


def format_log(message: tuple[int, str, float, str]) -> str:
    levelno, source, created, text = message
    return (f"{time.strftime('%H:%M:%S', time.localtime(created))} "
            f"{logging.getLevelName(levelno)}:{source}:{text}")
