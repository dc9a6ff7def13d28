"""Argument values checked where they are given: submit, change, resubmit, supply.

The master never runs experiment code to check values: it rebuilds each argument's
processor from its description (procdesc: ``NumberValue``, ``StringValue``,
``BooleanValue``, ``EnumerationValue``, ``PYONValue``, ``Scannable``) and checks the
value with it, as the worker will. A refusal is an ``ArgumentRefused`` (a
``ValueError``) of one line, ``NAME: REASON``, with values in the argument's declared
unit, never in SI (``points: 5000 is above the maximum 1000``, ``freq: 12 MHz is above
the maximum 10 MHz``):

- a name the examined argument list does not have is refused, naming the ones it has
  (the examination saw the arguments the experiment requests with its defaults; one
  requested only for other values of another argument cannot be submitted here);
- a scan is checked without making its points (``Scannable.check``): every point
  within ``global_min``/``global_max``;
- a value naming devices (procdesc key ``"device_db"``: plan arguments) must name keys
  of the current device database;
- a description that cannot be rebuilt (a processor labpipe does not know) leaves its
  value to the worker.

``check_arguments(arginfo, values, device_keys=)`` checks a submission's arguments
(``arginfo`` as ``explist`` holds it: ``{name: [procdesc, group, tooltip]}``);
``check_interactive(arglist_desc, values)`` the values supplied to an interactive
request (``[[key, procdesc, group, tooltip], ...]``), where a value left out takes its
default and an argument without one must be given.
"""

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from labpipe.language import arguments
from labpipe.language.exceptions import ArgumentError
from labpipe.protocol import pyon

__all__ = ["ArgumentRefused", "check_arguments", "check_interactive", "check_value"]

#: How many names a refusal lists at most (device keys, argument names).
_MAX_LISTED = 20


class ArgumentRefused(ValueError):
    """A submitted argument name or value was refused; one line, ``NAME: REASON``."""


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED
                    else "")


def _taking(desc: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: desc[name] for name in names if name in desc}


def _number(desc: Mapping[str, Any]) -> arguments.ArgumentProcessor:
    return arguments.NumberValue(**_taking(desc, (
        "unit", "scale", "step", "min", "max", "precision", "type")))


def _enumeration(desc: Mapping[str, Any]) -> arguments.ArgumentProcessor:
    return arguments.EnumerationValue(desc["choices"])


def _scannable(desc: Mapping[str, Any]) -> arguments.Scannable:
    # no default: a default scan would be made, point by point, in the master
    return arguments.Scannable(**_taking(desc, (
        "unit", "scale", "global_step", "global_min", "global_max", "precision")))


#: procdesc "ty" -> the processor checking values (built without the default: the
#: examination processed it already).
_REBUILD: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "NumberValue": _number,
    "StringValue": lambda desc: arguments.StringValue(),
    "BooleanValue": lambda desc: arguments.BooleanValue(),
    "EnumerationValue": _enumeration,
    "PYONValue": lambda desc: arguments.PYONValue(),
    "Scannable": _scannable,
}


def _device_check(name: str, kind: Any, value: Any, device_keys: Collection[str]) -> None:
    if kind == "keys":
        if isinstance(value, str):
            try:
                value = pyon.decode(value)
            except ValueError:
                return  # the processor says why
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ArgumentRefused(f"{name}: expected a list of devices (device_db keys), "
                                  f"got {value!r:.80}")
    elif kind == "key":
        items = [value]
    else:
        return
    for item in items:
        if isinstance(item, str) and item not in device_keys:
            have = _listed(device_keys) if device_keys else "none"
            raise ArgumentRefused(f"{name}: no device {item!r} in the device database "
                                  f"(device_db.py has: {have})")


def check_value(name: str, procdesc: Any, value: Any,
                device_keys: Collection[str] | None = None) -> None:
    """Refuse one value its description refuses (``ArgumentRefused``); see the module
    docstring. ``device_keys``: the device database's keys (None: not checked)."""
    if not isinstance(procdesc, Mapping):
        return
    if device_keys is not None and arguments.DEVICE_DB in procdesc:
        _device_check(name, procdesc[arguments.DEVICE_DB], value, device_keys)
    rebuild = _REBUILD.get(procdesc.get("ty"))  # type: ignore[arg-type]
    if rebuild is None:
        return
    try:
        processor = rebuild(procdesc)
    except Exception:
        return  # a description we cannot rebuild: the worker checks the value
    try:
        if isinstance(processor, arguments.Scannable):
            processor.check(value)
        else:
            processor.process(value)
    except ArgumentError as exc:
        raise ArgumentRefused(f"{name}: {exc.reason}") from None
    except Exception as exc:  # e.g. a comparison the value does not support
        raise ArgumentRefused(f"{name}: {value!r:.80} is refused ({type(exc).__name__}: "
                              f"{exc})") from None


def check_arguments(arginfo: Mapping[str, Any], values: Mapping[str, Any],
                    device_keys: Collection[str] | None = None,
                    experiment: str = "the experiment") -> None:
    """Refuse submitted argument values (``ArgumentRefused``): names ``arginfo`` does not
    have, then the first value refused; ``experiment`` names it in messages."""
    unknown = [name for name in values if name not in arginfo]
    if unknown:
        has = (f"its arguments: {_listed(arginfo)}" if arginfo
               else "it takes no arguments")
        what = "not an argument" if len(unknown) == 1 else "not arguments"
        raise ArgumentRefused(f"{', '.join(map(str, unknown))}: {what} of {experiment} "
                              f"({has})")
    for name, value in values.items():
        info = arginfo[name]
        procdesc = info[0] if isinstance(info, (list, tuple)) and info else None
        check_value(name, procdesc, value, device_keys)


def check_interactive(arglist_desc: Iterable[Any], values: Mapping[str, Any]) -> None:
    """Refuse values supplied to an interactive request (``ArgumentRefused``): a name
    not asked for, a value refused, an argument without default left out."""
    asked = {entry[0]: entry[1] for entry in arglist_desc}
    unknown = [name for name in values if name not in asked]
    if unknown:
        raise ArgumentRefused(f"{', '.join(map(str, unknown))}: not asked for (the run "
                              f"asks for {_listed(asked) or 'nothing'})")
    for name, procdesc in asked.items():
        if name in values:
            check_value(name, procdesc, values[name])
        elif isinstance(procdesc, Mapping) and "default" not in procdesc:
            raise ArgumentRefused(f"{name}: no value given, and it has no default")
