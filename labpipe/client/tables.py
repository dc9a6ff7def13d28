"""Tables that fit a width: which columns to show, and how to shorten their cells.

Each column has a priority (0: always shown, higher numbers go first when space is
short), a minimum width its cells may be shortened to, and the side long cells are
shortened on (paths lose their start, ``…/lab/hello.py``; names their end). Columns
whose cells are all empty are left out. When the natural table is too wide, cells of
shortenable columns are shortened (the widest first) down to their minimum; when that
is not enough, the column of the highest priority number is dropped and the fitting
starts again. ``rich`` draws the result (no borders, two spaces between columns, a
bold header when there is colour).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text

__all__ = ["Column", "Cell", "fit_table", "elide", "GAP"]

#: Spaces between two columns.
GAP = 2

Side = Literal["left", "right"]


@dataclass(frozen=True)
class Column:
    """One column: header, priority (0: never dropped), shortening."""

    header: str
    priority: int = 0
    min_width: int | None = None   # None: never shortened
    elide: Side = "right"          # the side that is cut
    justify: Literal["left", "right"] = "left"
    keep_empty: bool = False       # shown even when every cell is empty


@dataclass(frozen=True)
class Cell:
    """A cell's text and its style (a rich style name; only used with colour)."""

    text: str
    style: str = ""


def elide(text: str, width: int, side: Side = "right") -> str:
    """text in at most width characters, ``…`` where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    return "…" + text[-(width - 1):] if side == "left" else text[:width - 1] + "…"


def _as_cell(value: "Cell | str") -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


def _widths(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], shown: list[int],
            width: int) -> dict[int, int] | None:
    """Column widths for the shown columns within width, or None when they cannot
    fit even shortened."""
    natural = {i: max([len(columns[i].header)] + [len(r[i].text) for r in rows])
               for i in shown}
    excess = sum(natural.values()) + GAP * (len(shown) - 1) - width
    if excess <= 0:
        return natural
    floor = {i: max(columns[i].min_width or natural[i], len(columns[i].header))
             for i in shown}
    floor = {i: min(f, natural[i]) for i, f in floor.items()}
    if sum(natural[i] - floor[i] for i in shown) < excess:
        return None
    widths = dict(natural)
    while excess > 0:  # one character at a time off the widest shortenable column
        i = max((i for i in shown if widths[i] > floor[i]), key=lambda i: widths[i])
        widths[i] -= 1
        excess -= 1
    return widths


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence["Cell | str"]],
              width: int) -> Table:
    """The table of rows within width (see the module docstring)."""
    cells = [[_as_cell(value) for value in row] for row in rows]
    shown = [i for i, column in enumerate(columns)
             if column.keep_empty or column.priority == 0 or any(r[i].text for r in cells)]
    droppable = sorted((i for i in shown if columns[i].priority > 0),
                       key=lambda i: (-columns[i].priority, -i))
    widths = _widths(columns, cells, shown, width)
    while widths is None and droppable:
        shown.remove(droppable.pop(0))
        widths = _widths(columns, cells, shown, width)
    if widths is None:  # even the essential columns do not fit: cut at the edge
        widths = _widths(columns, cells, shown, 10**9) or {}
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, GAP // 2),
                  header_style="bold", show_header=True)
    for i in shown:
        table.add_column(columns[i].header, justify=columns[i].justify, no_wrap=True,
                         overflow="ellipsis", width=widths[i])
    for row in cells:
        table.add_row(*(Text(elide(row[i].text, widths[i], columns[i].elide),
                             style=row[i].style) for i in shown))
    return table
