"""Argument values checked at submission, from the examined descriptions (procdescs).

The master never runs experiment code to check a submission: it rebuilds each argument's
processor from its procdesc (NumberValue, StringValue, BooleanValue, EnumerationValue)
and processes the submitted value, so a wrong type or an out-of-range value is refused
at once with the argument's name. Names the examination did not see are left to the
worker (an experiment may request an argument only for some values of another), as are
PYONValue and Scannable values.
"""

from typing import Any

from labpipe.language import arguments

__all__ = ["check_argument_values"]

_REBUILDABLE = {"NumberValue", "StringValue", "BooleanValue", "EnumerationValue"}


def _processor(procdesc: dict[str, Any]) -> arguments.ArgumentProcessor | None:
    ty = procdesc.get("ty")
    if ty not in _REBUILDABLE:
        return None
    return getattr(arguments, ty)(**{k: v for k, v in procdesc.items() if k != "ty"})


def check_argument_values(arginfo: dict[str, Any], values: dict[str, Any]) -> None:
    """Raise ValueError naming the first argument whose value its processor refuses."""
    for key, value in values.items():
        if key not in arginfo:
            continue
        try:
            processor = _processor(arginfo[key][0])
        except Exception:
            continue  # a description we cannot rebuild: the worker checks it
        if processor is None:
            continue
        try:
            processor.process(value)
        except Exception as exc:
            message = str(exc)
            raise ValueError(message if f"'{key}'" in message
                             else f"argument '{key}': {message}") from None
