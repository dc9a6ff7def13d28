"""Bluesky plan functions as experiments: listed in ``explist``, submitted by name.

In a repository module, decorate a plan function, or list plan names in ``__plans__``
and call ``experiments_from_plans``::

    from bluesky.plans import count, scan
    from labpipe.bluesky.plans import experiments_from_plans, plan_experiment

    @plan_experiment
    def sweep(detectors: list[Readable], motor: Movable, start: float = -1.0,
              stop: float = 1.0, num: int = 5):
        "Sweep a motor"
        yield from scan(detectors, motor, start, stop, num)

    __plans__ = ["count", "scan"]
    experiments_from_plans(globals())

Each name then holds an experiment class of that name (``count``, ``scan``, ``sweep``)
which is still the plan: called with plan arguments (``count([det], num=3)``) it returns
the plan's generator, so plans keep composing (``yield from sweep(...)``). Only the
experiment machinery (a call with the managers tuple or a parent environment) builds
an experiment. ``cls.plan`` is the original function.

Arguments come from the plan's signature, in order (so ``explist``'s ``arginfo`` order
is the positional order):

- a device parameter (annotated with a device protocol or class such as ``Readable``,
  ``Movable``, ``Device``, ``Signal``; or, unannotated, named ``detector``/``det``/
  ``motor``): ``EnumerationValue`` of the device database keys when the device manager
  gives the database, else ``StringValue``; the value is a device key, and the procdesc
  says so with ``"device_db": "key"``;
- a list of devices (``Sequence[Readable]``, ``list[...]``, or named ``detectors``/
  ``dets``/``motors``): ``PYONValue``, a list of device keys (``"device_db": "keys"``
  in its procdesc);
- ``bool``/``int``/``float``/``str`` (annotation or default; not Optional):
  ``BooleanValue``/``NumberValue``/``StringValue``;
- anything else: ``PYONValue`` (with the default, if any);
- ``*args``: the argument ``"*args"`` (``PYONValue``, default ``[]``), ``**kwargs``: the
  argument ``"**kwargs"`` (``PYONValue``, default ``{}``);
- skipped: ``md`` (give metadata through the start document instead) and callables
  with a default (``per_shot``, ``per_step``).

At run time device keys become devices (``get_device``); in ``PYONValue`` arguments and
``*args``/``**kwargs`` every string that is a device key becomes that device (as the
bluesky queueserver does). The plan runs with ``run_plan``; the uids are in
``self.uids``.

``plan_arguments(arginfo_keys, args, kwargs)`` turns a queueserver-style item's
positional and keyword arguments into the ``arguments`` of an expid, given the
experiment's argument keys in order (what ``explist`` holds); ``plan_expid(explist,
name, args, kwargs)`` finds the plan in ``explist`` and makes the whole expid (what a
``schedule.submit_plan`` would submit).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard, cast, overload

from labpipe.language.arguments import (DEVICE_DB, ArgumentProcessor, BooleanValue,
                                        EnumerationValue, NoDefault, NumberValue, PYONValue,
                                        StringValue)
from labpipe.language.environment import EnvExperiment, HasEnvironment

__all__ = ["plan_experiment", "experiments_from_plans", "plan_arguments",
           "plan_expid", "is_plan_experiment"]

_DEVICE_WORDS = r"\b(Readable|Movable|Flyable|Triggerable|Locatable|Stageable|" \
                r"Configurable|Device|Signal|EpicsSignal\w*|EpicsMotor|PseudoPositioner|" \
                r"PositionerBase|SynAxis|SynGauss)\b"
_SEQUENCE = r"^(collections\.abc\.|typing\.)?(Sequence|Iterable|list|List|tuple|Tuple|" \
            r"Collection)\["
_CALLABLE = r"^(collections\.abc\.|typing\.)?Callable\b"
_DEVICE_NAMES = {"detector", "det", "motor", "signal", "positioner"}
_DEVICES_NAMES = {"detectors", "dets", "motors", "signals", "positioners"}
_SKIPPED = {"md"}

VAR_POSITIONAL = "*args"
VAR_KEYWORD = "**kwargs"


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__qualname__
    return str(annotation)


def _classify(param: inspect.Parameter) -> str:
    """One of device, devices, skip, bool, int, float, str, pyon."""
    text = _annotation_text(param.annotation)
    has_default = param.default is not inspect.Parameter.empty
    if param.name in _SKIPPED:
        return "skip"
    if text:
        if re.search(_CALLABLE, text) and has_default:
            return "skip"
        if re.search(_DEVICE_WORDS, text):
            return "devices" if re.search(_SEQUENCE, text) else "device"
        if text in ("bool", "int", "float", "str"):
            return text
        return "pyon"
    if param.name in _DEVICES_NAMES:
        return "devices"
    if param.name in _DEVICE_NAMES:
        return "device"
    if callable(param.default) and has_default:
        return "skip"
    if has_default and param.default is not None:
        for kind in (bool, int, float, str):
            if type(param.default) is kind:
                return kind.__name__
    return "pyon"


class _DeviceChoice(EnumerationValue):
    """A device key, one of the device database's when examined."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), DEVICE_DB: "key"}


class _DeviceName(StringValue):
    """A device key, when the device database's keys are not known."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), DEVICE_DB: "key"}


class _DeviceList(PYONValue):
    """A list of device keys, as PYON text."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), DEVICE_DB: "keys"}


def _processor(kind: str, default: Any, device_keys: list[str] | None) -> ArgumentProcessor:
    if default is inspect.Parameter.empty:
        default = NoDefault
    if kind == "device":
        if device_keys:
            if default is not NoDefault and default not in device_keys:
                default = NoDefault
            return _DeviceChoice(device_keys, default)
        return _DeviceName(default)
    if kind == "devices":
        return _DeviceList(default)
    if kind == "bool":
        return BooleanValue(default)
    if kind == "int":
        return NumberValue(default, precision=0, type="int", step=1)
    if kind == "float":
        return NumberValue(default)
    if kind == "str":
        return StringValue(default)
    return PYONValue(default)


_TOOLTIPS = {"device": "a device (device_db key)",
             "devices": "a list of devices (device_db keys)"}


def plan_parameters(func: Callable[..., Any]) -> list[tuple[str, str, Any]]:
    """``[(argument key, kind, default)]`` of a plan function, in signature order."""
    out: list[tuple[str, str, Any]] = []
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            out.append((VAR_POSITIONAL, "varargs", []))
        elif param.kind is param.VAR_KEYWORD:
            out.append((VAR_KEYWORD, "varkw", {}))
        else:
            kind = _classify(param)
            if kind != "skip":
                out.append((param.name, kind, param.default))
    return out


def _device_keys(env: HasEnvironment) -> list[str] | None:
    try:
        return sorted(env.get_device_db())
    except Exception:  # the device manager does not give the database
        return None


def _resolve_names(env: HasEnvironment, value: Any) -> Any:
    """value with every string that is a device key replaced by the device."""
    if isinstance(value, str):
        try:
            return env.get_device(value)
        except KeyError:
            return value
    if isinstance(value, list):
        return [_resolve_names(env, v) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_names(env, v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_names(env, v) for k, v in value.items()}
    return value


class _PlanExperimentType(type):
    """Calling the class with the experiment managers (or a parent environment) builds
    the experiment; any other call is a call of the plan."""

    plan: Callable[..., Any]  # on each class: the plan function

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args and not kwargs and (
                isinstance(args[0], HasEnvironment)
                or (type(args[0]) is tuple and len(args[0]) == 4
                    and isinstance(args[0][3], dict))):
            return super().__call__(*args, **kwargs)
        return cls.plan(*args, **kwargs)


class _PlanExperiment(EnvExperiment, metaclass=_PlanExperimentType):
    plan: Callable[..., Any]
    parameters: list[tuple[str, str, Any]]
    _positional: dict[str, bool]  # parameter name -> passed positionally

    def build(self) -> None:
        keys = _device_keys(self)
        self.plan_values: dict[str, Any] = {}
        for key, kind, default in self.parameters:
            processor = _processor(kind, default, keys)
            self.plan_values[key] = self.get_argument(
                key, processor, group="plan", tooltip=_TOOLTIPS.get(kind))

    def plan_call(self) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments of the plan, devices resolved."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for key, kind, _default in self.parameters:
            value = self.plan_values[key]
            if kind == "device":
                value = self.get_device(value)
            elif kind == "devices":
                if isinstance(value, str):
                    value = [value]
                value = [self.get_device(v) if isinstance(v, str) else v for v in value]
            elif kind in ("pyon", "varargs", "varkw"):
                value = _resolve_names(self, value)
            if kind == "varargs":
                args.extend(value)
            elif kind == "varkw":
                kwargs.update(value)
            elif self._positional[key]:
                args.append(value)
            else:
                kwargs[key] = value
        return args, kwargs

    def run(self) -> None:
        args, kwargs = self.plan_call()
        self.uids = self.run_plan(type(self).plan(*args, **kwargs))


@overload
def plan_experiment(func: None = None, *, name: str | None = None
                    ) -> Callable[[Callable[..., Any]], type[EnvExperiment]]: ...


@overload
def plan_experiment(func: Callable[..., Any], *, name: str | None = None
                    ) -> type[EnvExperiment]: ...


def plan_experiment(func: Callable[..., Any] | None = None, *, name: str | None = None
                    ) -> type[EnvExperiment] | Callable[[Callable[..., Any]], type[EnvExperiment]]:
    """An experiment class running the plan ``func`` (module docstring); usable as a
    decorator. ``name`` defaults to the function's name."""
    if func is None:
        return lambda f: plan_experiment(f, name=name)
    if is_plan_experiment(func):
        return func
    name = name or func.__name__
    params = list(inspect.signature(func).parameters.values())
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    # passed positionally: positional-only parameters, and all before a *args
    positional = {p.name: p.kind is p.POSITIONAL_ONLY
                  or (has_varargs and p.kind is p.POSITIONAL_OR_KEYWORD) for p in params}
    namespace = {
        "__doc__": func.__doc__ or f"Plan {name}",
        "__module__": getattr(func, "__module__", __name__),
        "__qualname__": name,
        "__wrapped__": func,
        "plan": staticmethod(func),
        "parameters": plan_parameters(func),
        "_positional": positional,
    }
    # a class made by calling its metaclass: the checker sees only the metaclass
    return cast(type[EnvExperiment], _PlanExperimentType(name, (_PlanExperiment,), namespace))


def is_plan_experiment(obj: Any) -> TypeGuard[type[EnvExperiment]]:
    """Whether obj is a class made by ``plan_experiment``."""
    return isinstance(obj, _PlanExperimentType) and obj is not _PlanExperiment


def experiments_from_plans(namespace: dict[str, Any], names: list[str] | None = None
                           ) -> dict[str, type[EnvExperiment]]:
    """Replace each plan named in ``names`` (default: ``namespace["__plans__"]``) by its
    experiment class, in place; returns ``{name: class}``."""
    if names is None:
        names = list(namespace.get("__plans__", ()))
    made = {}
    for plan_name in names:
        if plan_name not in namespace:
            raise NameError(f"__plans__ names {plan_name!r}, which is not defined here")
        made[plan_name] = namespace[plan_name] = plan_experiment(namespace[plan_name],
                                                                 name=plan_name)
    return made


def plan_arguments(keys: list[str], args: list[Any] | tuple[Any, ...] = (),
                   kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The expid ``arguments`` of a plan experiment for positional ``args`` and keyword
    ``kwargs``, given its argument ``keys`` in order (``explist``'s ``arginfo`` keys).

    Positional arguments fill the keys in order; those left over go to ``"*args"`` when
    the plan has it. Keyword arguments go to their key, or into ``"**kwargs"``.
    """
    keys = list(keys)
    kwargs = dict(kwargs or {})
    named = [k for k in keys if k not in (VAR_POSITIONAL, VAR_KEYWORD)]
    arguments: dict[str, Any] = {}
    args = list(args)
    # positional parameters: those before "*args" (all of them when there is none)
    before = keys[:keys.index(VAR_POSITIONAL)] if VAR_POSITIONAL in keys else named
    if len(args) > len(before) and VAR_POSITIONAL not in keys:
        raise TypeError(f"{len(args)} positional arguments given, the plan takes "
                        f"{len(before)} ({', '.join(before) or 'none'})")
    for key, value in zip(before, args):
        arguments[key] = value
    if VAR_POSITIONAL in keys:
        arguments[VAR_POSITIONAL] = args[len(before):]
    extra = {}
    for key, value in kwargs.items():
        if key in arguments:
            raise TypeError(f"argument {key!r} given twice (positional and keyword)")
        if key in named:
            arguments[key] = value
        elif VAR_KEYWORD in keys:
            extra[key] = value
        else:
            raise TypeError(f"unknown argument {key!r}; the plan takes: "
                            f"{', '.join(named) or 'none'}")
    if extra:
        arguments[VAR_KEYWORD] = extra
    return arguments


def plan_expid(explist: Mapping[str, dict[str, Any]], name: str,
               args: list[Any] | tuple[Any, ...] = (),
               kwargs: Mapping[str, Any] | None = None, *, file: str | None = None,
               log_level: int = 30) -> dict[str, Any]:
    """The expid running plan ``name`` with a queueserver-style item's ``args`` and
    ``kwargs`` (device names as they are: the worker resolves them).

    ``explist`` is the ``explist`` notifier's content (``{display name: {"file",
    "class_name", "arginfo", ...}}``); the plan is the entry whose ``class_name`` is
    ``name`` (in ``file`` when given; ``ValueError`` when none or several match). The
    expid takes the repository's current revision (``repo_rev`` None).
    """
    entries = [e for e in explist.values() if e.get("class_name") == name
               and (file is None or e.get("file") == file)]
    if not entries:
        raise ValueError(f"no plan {name!r} in the experiment list"
                         + (f" (file {file!r})" if file else ""))
    if len(entries) > 1:
        files = ", ".join(sorted(e["file"] for e in entries))
        raise ValueError(f"plan {name!r} is in several files ({files}); give the file")
    (entry,) = entries
    try:
        arguments = plan_arguments(list(entry["arginfo"]), args, kwargs)
    except TypeError as e:
        raise ValueError(f"plan {name!r}: {e}") from None
    return {"file": entry["file"], "class_name": name, "repo_rev": None,
            "log_level": log_level, "arguments": arguments}
