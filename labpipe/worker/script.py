"""Black-box scripts: plain Python files, run as one run.

A *black-box script* is a Python file that is not an experiment: it imports nothing
from ``labpipe`` or ``artiq`` (experiments, bluesky plan files and helpers all do) and
defines no class that looks like an experiment (a base named
``...Experiment``/``HasEnvironment``, or a ``run`` method).
Sibling modules the file imports count too (an experiment imported from a sibling
makes an experiment file). ``is_black_box_script(source, folder)`` decides it from the
sources (``ast``), without running anything: importing a script runs it, so neither examination nor the build of
a run may import it. The usual experiment file, whose first statements after its
docstring and plain imports import ``labpipe`` or ``artiq``, is recognised by a regular
expression, without parsing it (a run's build then costs a fresh worker ~0.5 ms less).

Submitted with ``class_name`` None, such a file runs as one run: build and prepare do
nothing (the source is compiled in build, so a syntax error fails there), the run stage
executes the file as ``__main__`` (``sys.argv == [path]``, its folder first on
``sys.path``), and what it prints goes to the run's log as print lines, whatever the
run's log level (``output.py``). It cannot pause or report progress (it does not know the scheduler); it can
be deleted like any run. ``SystemExit`` with status 0 or None ends it normally; another
status fails the run. It takes no arguments.

Only Python files run as scripts: a file that is not an experiment must have a ``.py``
suffix or a ``python`` shebang line, otherwise ``check_script_name`` (the examiner, at
submit) and ``black_box_class`` (the worker) refuse it with ``NotAScriptError`` naming
the file, without running it (a text file holding a secret token would otherwise run,
and its text come back in a ``NameError`` in the history every client sees).
"""

import ast
import builtins
import os
import re
import sys

from labpipe.language.environment import EnvExperiment

__all__ = ["is_black_box_script", "is_black_box_file", "script_experiment",
           "black_box_class", "check_script_name", "NotAScriptError", "SCRIPT_CLASS_NAME"]

#: The class name a script run has (results file name, log source).
SCRIPT_CLASS_NAME = "Script"

_API_PACKAGES = ("labpipe", "artiq")


def _triple_quoted(q: str) -> str:
    """A triple-quoted string without prefix, ended where Python's tokenizer ends it."""
    return q * 3 + r"(?:[^" + q + r"\\]|\\.|" + q + "(?!" + q * 2 + "))*" + q * 3


_LINE_END = r"[ \t]*(?:#[^\r\n]*)?\r?\n"
#: Source starting with lines that cannot leave a string, a bracket or a line
#: continuation open (blank and comment lines, ``import x as y``, ``from x import *``,
#: a docstring), then ``import labpipe...`` or ``from artiq...`` (a whole name) at
#: column 0: if it parses, it imports the API at top level (an experiment file); if
#: not, it is no script either.
_STARTS_WITH_API_IMPORT = re.compile(
    r"(?:[A-Za-z0-9_ \t.,*]*(?:#[^\r\n]*)?\r?\n"
    + "|(?:" + _triple_quoted('"') + "|" + _triple_quoted("'") + ")" + _LINE_END + ")*?"
    + r"(?:from|import)[ \t]+(?:" + "|".join(_API_PACKAGES) + r")(?=[ \t.,;#\r\n])",
    re.DOTALL)


def _is_api(module: str | None) -> bool:
    return module is not None and module.partition(".")[0] in _API_PACKAGES


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _sibling_file(folder: str, module: str) -> str | None:
    """The file of module if it lives in folder (``name.py`` or ``name/__init__.py``)."""
    first = module.partition(".")[0]
    for candidate in (os.path.join(folder, first + ".py"),
                      os.path.join(folder, first, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _looks_like_experiment(source: str, folder: str | None, seen: set) -> bool | None:
    """True when the source (or a sibling module it imports, followed through folder)
    uses labpipe/artiq or defines an experiment-looking class; None if it does not
    parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.ImportFrom) and folder is not None:
            imported.append(node.module or "")  # relative: a package sibling
    if any(_is_api(name) for name in imported):
        return True
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            if any(n.endswith("Experiment") or n == "HasEnvironment"
                   for n in map(_base_name, node.bases)):
                return True
            if any(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and item.name == "run" for item in node.body):
                return True
    if folder is None:
        return False
    for name in imported:
        sibling = _sibling_file(folder, name) if name else None
        if sibling is None or sibling in seen or len(seen) > 50:
            continue
        seen.add(sibling)
        try:
            with open(sibling, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if _looks_like_experiment(text, os.path.dirname(sibling), seen):
            return True
    return False


def is_black_box_script(source: str, folder: str | None = None) -> bool:
    """Whether source is a plain script rather than an experiment file. With the
    file's folder, the sibling modules it imports are looked at too (an experiment
    imported from a sibling makes an experiment file). A file that does not parse is
    not a script (importing it reports the syntax error)."""
    if _STARTS_WITH_API_IMPORT.match(source):
        return False  # the usual experiment file, decided without ast.parse
    return _looks_like_experiment(source, folder, set()) is False


class NotAScriptError(ValueError):
    """A file that is neither an experiment nor a Python script; the message names it."""

    def __init__(self, path: str):
        super().__init__(f"{os.path.basename(path)} is neither an experiment nor a Python "
                         "script (no .py suffix, no python shebang line): not run")


def _python_named(path: str, source: str) -> bool:
    first = source[:200].partition("\n")[0]
    return path.endswith(".py") or (first.startswith("#!") and "python" in first)


def check_script_name(path: str) -> bool:
    """Whether the file at path is a black-box script (True) or to be imported as an
    experiment file (False: experiments, and files that cannot be read or parsed,
    whose import reports why). ``NotAScriptError`` for a file that would be a script
    but is not a Python file by name or shebang."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError:
        if path.endswith(".py"):
            return False
        raise NotAScriptError(path) from None
    except OSError:
        return False
    folder = os.path.dirname(path)
    if _python_named(path, source):
        return is_black_box_script(source, folder)
    if _STARTS_WITH_API_IMPORT.match(source) or _looks_like_experiment(source, folder, set()):
        return False
    raise NotAScriptError(path)


def is_black_box_file(path: str) -> bool:
    """``is_black_box_script`` of a file (False when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    return is_black_box_script(source, os.path.dirname(os.path.abspath(path)))


def script_experiment(path: str, source: str) -> type:
    """An experiment class whose run stage executes the script (compiled now: a
    syntax error raises here)."""
    code = compile(source, path, "exec")
    folder = os.path.dirname(os.path.abspath(path))

    class Script(EnvExperiment):
        """A black-box script."""

        def run(self) -> None:
            namespace = {"__name__": "__main__", "__file__": path,
                         "__builtins__": builtins}
            saved_argv, saved_path = sys.argv, list(sys.path)
            sys.argv = [path]
            sys.path.insert(0, folder)
            try:
                exec(code, namespace)  # noqa: S102 - running the user's script is the job
            except SystemExit as e:
                if e.code not in (None, 0):
                    raise RuntimeError(f"the script exited with status {e.code!r}") from None
            finally:
                sys.argv = saved_argv
                sys.path[:] = saved_path
                for stream in (sys.stdout, sys.stderr):
                    flush = getattr(stream, "flush", None)
                    if flush is not None:
                        flush()

    Script.__name__ = Script.__qualname__ = SCRIPT_CLASS_NAME
    return Script


def black_box_class(path: str, expid: dict) -> type | None:
    """The experiment class running the file at path as a black-box script, or None
    when expid names a class or the file is not a black-box script (or is unreadable:
    the import then reports why)."""
    if expid.get("class_name") is not None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    folder = None if expid.get("content") is not None else os.path.dirname(path)
    if not is_black_box_script(source, folder):
        return None
    if folder is not None and not _python_named(path, source):
        raise NotAScriptError(path)
    return script_experiment(path, source)
