"""A function of the lab's functions module, called in a worker as one experiment.

The master's ``schedule.call_function`` (``labpipe.master.functions``) sends the worker
an expid with a ``"function"`` entry: ``{"task", "module", "name", "args", "kwargs"}``.
``function_class(expid, workdir, send)`` gives the experiment class the worker builds
instead of importing an experiment file; its stages are those of any run:

- build: import ``module`` with ``workdir`` (the lab directory, or the repository's
  checkout) first on ``sys.path``, and look the function up;
- run: call it, with the experiment itself as ``env`` when the function has a parameter
  of that name (``env.get_device``, ``env.get_dataset``, ``env.set_dataset``... as
  in any ARTIQ experiment); its return value must be a PYON value;
- analyze: nothing (the results file records the value as the ``function_return``
  dataset, its PYON text).

Whatever happens, one ``FunctionOutcome`` message tells the master how the call ended:
the value as PYON text, or one line naming the function and the exception (import
failing, no such function, wrong arguments, the function raising, a value PYON cannot
encode), with the traceback. A failure then also fails the stage (``FunctionFailed``),
so that the run ends ``failed`` with that line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from labpipe.language.environment import EnvExperiment
from labpipe.language.exceptions import TerminationRequested
from labpipe.protocol import pyon
from labpipe.worker.messages import FunctionOutcome, Message
from labpipe.worker.runner import one_line

__all__ = ["FUNCTION_KEY", "FunctionFailed", "function_class", "MAX_VALUE_CHARS"]

#: The expid key of a function call.
FUNCTION_KEY = "function"
#: The longest return value (its PYON text, characters) a call may give.
MAX_VALUE_CHARS = 1 << 20


class FunctionFailed(Exception):
    """A function call could not give a value; the message is the one line the master
    reports (it names the function)."""


def function_class(expid: dict[str, Any], workdir: str | None,
                   send: Callable[[Message], None]) -> type[EnvExperiment]:
    """The experiment class calling ``expid["function"]``; ``send`` passes messages to
    the master (the worker's channel)."""
    spec = expid[FUNCTION_KEY]
    task, module, name = str(spec["task"]), str(spec["module"]), str(spec["name"])
    args, kwargs = list(spec.get("args") or []), dict(spec.get("kwargs") or {})
    label = f"{module}.{name}"

    class FunctionCall(EnvExperiment):
        """Calls ``label`` (see the module docstring)."""

        function: Callable[..., Any]

        def _fail(self, message: str, text: str = "") -> FunctionFailed:
            send(FunctionOutcome(task, False, "", message, text))
            return FunctionFailed(message)

        def build(self) -> None:
            if workdir is not None and workdir not in sys.path:
                sys.path.insert(0, os.path.abspath(workdir))
            try:
                found = importlib.import_module(module)
            except BaseException as exc:  # SystemExit in module code too
                raise self._fail(f"cannot import the functions module {module!r}: "
                                 f"{one_line(exc)}", traceback.format_exc()) from None
            function = getattr(found, name, None) if not name.startswith("_") else None
            if not callable(function) or isinstance(function, type):
                raise self._fail(f"the functions module {module!r} has no function "
                                 f"{name!r}")
            self.function = function

        def _arguments(self) -> tuple[list[Any], dict[str, Any]]:
            """args and kwargs, with the experiment as ``env`` when asked for."""
            call_args, call_kwargs = list(args), dict(kwargs)
            try:
                signature = inspect.signature(self.function)
            except (TypeError, ValueError):
                return call_args, call_kwargs
            parameters = list(signature.parameters.values())
            env = signature.parameters.get("env")
            if env is not None and "env" not in call_kwargs:
                index = parameters.index(env)
                if (env.kind is env.POSITIONAL_ONLY
                        or (env.kind is env.POSITIONAL_OR_KEYWORD
                            and len(call_args) >= index)):
                    call_args.insert(index, self)
                else:
                    call_kwargs["env"] = self
            try:
                signature.bind(*call_args, **call_kwargs)
            except TypeError as exc:
                raise self._fail(f"{label}: wrong arguments: {exc}") from None
            return call_args, call_kwargs

        def run(self) -> None:
            call_args, call_kwargs = self._arguments()
            try:
                value = self.function(*call_args, **call_kwargs)
            except TerminationRequested:
                raise  # the run ends terminated, as any run
            except Exception as exc:
                raise self._fail(f"{label} raised {one_line(exc)}",
                                 traceback.format_exc()) from None
            try:
                text = pyon.encode(value)
            except Exception as exc:
                raise self._fail(f"{label} returned a value that is not PYON "
                                 f"({type(value).__name__}): {one_line(exc)}") from None
            if len(text) > MAX_VALUE_CHARS:
                raise self._fail(f"{label} returned a value of {len(text)} characters "
                                 f"of PYON, more than the {MAX_VALUE_CHARS} allowed")
            self.set_dataset("function_return", text)  # archived in the results file
            send(FunctionOutcome(task, True, text, "", ""))

    FunctionCall.__name__ = FunctionCall.__qualname__ = _class_name(name)
    return FunctionCall


def _class_name(name: str) -> str:
    """The class name the run shows (results file ``RID-NAME.h5``)."""
    return name if name.isidentifier() else "Function"
