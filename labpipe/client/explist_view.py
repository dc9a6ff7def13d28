"""The experiment list as people read it (``show explist``): each experiment with each
of its arguments, the argument's type, default and range or choices, in the form the
client reads them back (``2.5MHz``, ``-2mm:2mm:21``, ``10MHz±1MHz/0.5MHz``)."""

from typing import Any

from rich.text import Text

from labpipe.client.formatting import table_text
from labpipe.client.quantities import format_quantity
from labpipe.client.screen import Screen, render
from labpipe.client.tables import Cell, Column
from labpipe.client.values import is_int
from labpipe.protocol import pyon

__all__ = ["format_explist", "describe_argument", "EXPLIST_COLUMNS"]

EXPLIST_COLUMNS = (
    Column("Experiment", 0, min_width=10), Column("File", 2, min_width=10, elide="left"),
    Column("Class", 3, min_width=8), Column("Argument", 0, min_width=8),
    Column("Type", 1), Column("Default", 1, min_width=8),
    Column("Range or choices", 2, min_width=10))

_TYPES = {"BooleanValue": "bool", "StringValue": "string", "EnumerationValue": "choice",
          "PYONValue": "pyon", "Scannable": "scan"}


def _bound(low: Any, high: Any, unit: str, scale: float) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f">= {format_quantity(low, unit, scale)}"
    if low is None:
        return f"<= {format_quantity(high, unit, scale)}"
    return f"{format_quantity(low, unit, scale)} to {format_quantity(high, unit, scale)}"


def _scan_text(scan: Any, unit: str, scale: float) -> str:
    """A scan description as the client reads scans."""
    if not isinstance(scan, dict):
        return pyon.encode(scan)

    def q(value: Any) -> str:
        return format_quantity(value, unit, scale)
    ty = scan.get("ty")
    if ty == "RangeScan":
        return f"{q(scan['start'])}:{q(scan['stop'])}:{scan['npoints']}"
    if ty == "CenterScan":
        return f"{q(scan['center'])}±{q(scan['span'] / 2)}/{q(scan['step'])}"
    if ty == "ExplicitScan":
        return ",".join(q(v) for v in scan.get("sequence", []))
    if ty == "NoScan":
        repeat = scan.get("repetitions", 1)
        return q(scan.get("value")) + (f" (x{repeat})" if repeat != 1 else "")
    return pyon.encode(scan)


def describe_argument(procdesc: dict[str, Any]) -> tuple[str, str, str]:
    """(type, default, range or choices) of an argument's description."""
    ty = procdesc.get("ty")
    unit, scale = procdesc.get("unit") or "", procdesc.get("scale") or 1.0
    has_default = "default" in procdesc
    default = procdesc.get("default")
    if ty == "NumberValue":
        kind = "int" if is_int(procdesc) else "float"
        if unit:
            kind += f" ({unit})"
        shown = format_quantity(default, unit, scale) if has_default else ""
        return kind, shown, _bound(procdesc.get("min"), procdesc.get("max"), unit, scale)
    if ty == "Scannable":
        kind = f"scan ({unit})" if unit else "scan"
        scans = default if isinstance(default, list) else [default]
        shown = _scan_text(scans[0], unit, scale) if has_default and scans else ""
        return kind, shown, _bound(procdesc.get("global_min"), procdesc.get("global_max"),
                                   unit, scale)
    if ty == "EnumerationValue":
        choices = " | ".join(str(c) for c in procdesc.get("choices") or [])
        return "choice", str(default) if has_default else "", choices
    if ty == "BooleanValue":
        return "bool", ("true" if default else "false") if has_default else "", ""
    if ty == "PYONValue":
        return "pyon", str(default) if has_default else "", ""
    if ty == "StringValue":
        return "string", repr(default) if has_default else "", ""
    return str(ty), pyon.encode(default) if has_default else "", ""


def format_explist(snapshot: dict, screen: Screen | None = None) -> str:
    """The experiment list, its revision, and the files that could not be examined."""
    explist, status, errors = snapshot["explist"], snapshot["status"], snapshot["errors"]
    lines = [f"Revision: {status.get('cur_rev')}"
             + ("  (scanning)" if status.get("scanning") else "")]
    if explist:
        rows: list[list[Cell | str]] = []
        for name, entry in sorted(explist.items()):
            first = [name, entry["file"], entry["class_name"]]
            arginfo = entry.get("arginfo") or {}
            if not arginfo:
                rows.append(first + ["", "", "", ""])
            for argument, info in arginfo.items():
                procdesc = info[0] if isinstance(info, (list, tuple)) and info else {}
                kind, default, allowed = describe_argument(
                    procdesc if isinstance(procdesc, dict) else {})
                rows.append(first + [argument, Cell(kind, "cyan"), default, allowed])
                first = ["", "", ""]
        lines.append(table_text(EXPLIST_COLUMNS, rows, screen))
    else:
        lines.append("No experiments")
    for file, reason in sorted(errors.items()):
        lines.append(render(Text(f"skipped {file}: {reason}", style="red"), screen))
    return "\n".join(lines)
