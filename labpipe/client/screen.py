"""Where the client's output goes, and how it looks there (``rich`` renders it).

On a terminal, tables fit its width and use colour (off with ``NO_COLOR`` set, as
https://no-color.org asks); long commands show a spinner on stderr. Piped, output is
plain text of any width (nothing is cut, no colour, no spinner), as scripts and
``grep`` want it; ``--json`` is for scripts that parse.
"""

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rich.console import Console, RenderableType
from rich.text import Text

__all__ = ["Screen", "render", "busy", "Status", "UNLIMITED"]

#: The width of output that is not a terminal: nothing is cut.
UNLIMITED = 100_000


@dataclass(frozen=True)
class Screen:
    """How output is laid out: its width in columns and whether it has colour."""

    width: int = UNLIMITED
    color: bool = False

    @classmethod
    def of(cls, stream: IO[str] | None = None) -> "Screen":
        """The screen of stream (stdout by default): a terminal's width and colour,
        or plain text of unlimited width when it is not a terminal."""
        stream = sys.stdout if stream is None else stream
        if not _is_terminal(stream):
            return cls()
        try:
            width = os.get_terminal_size(stream.fileno()).columns
        except OSError:
            width = 80
        return cls(width=max(width, 20), color=not os.environ.get("NO_COLOR"))

    @property
    def is_terminal(self) -> bool:
        return self.width != UNLIMITED


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def render(renderable: RenderableType, screen: Screen | None = None) -> str:
    """The text of renderable on screen (plain and unlimited by default), without
    trailing spaces or a final newline."""
    screen = screen or Screen()
    out = io.StringIO()
    console = Console(file=out, width=screen.width, color_system="standard" if screen.color
                      else None, force_terminal=screen.color, no_color=not screen.color,
                      highlight=False, emoji=False, markup=False, soft_wrap=False,
                      legacy_windows=False)
    console.print(renderable)
    return "\n".join(_TRAILING.sub(r"\1", line)
                     for line in out.getvalue().rstrip("\n").split("\n"))


#: Spaces at the end of a line, before the escape codes that may close it.
_TRAILING = re.compile(r"[ \t]+((?:\x1b\[[0-9;]*m)*)$")


class Status(Protocol):
    """What ``busy`` yields: a line that can be changed."""

    def update(self, text: str) -> None: ...


class _Quiet:
    def update(self, text: str) -> None:
        pass


@contextlib.contextmanager
def busy(text: str, stream: IO[str] | None = None) -> Iterator[Status]:
    """A spinner with text on stderr while the block runs, when stderr is a terminal;
    nothing otherwise. The yielded object's ``update(text)`` changes the text."""
    stream = sys.stderr if stream is None else stream
    if not _is_terminal(stream):
        yield _Quiet()
        return
    console = Console(file=stream, highlight=False, markup=False, emoji=False,
                      no_color=bool(os.environ.get("NO_COLOR")))
    with console.status(Text(text), spinner="dots") as status:
        yield _Updater(status)


class _Updater:
    def __init__(self, status: Any):
        self._status = status

    def update(self, text: str) -> None:
        self._status.update(Text(text))
