"""ARTIQ's core-device language, as far as a host-only labpipe can answer for it.

labpipe runs experiments on the host only: it has no core device, no kernel compiler and
no RTIO timeline. An ARTIQ experiment file still imports (``from artiq.experiment import
*`` gives these names, see ``artiq_alias.py``), is examined and may run, as long as it
never needs the core device:

- ``@kernel``, ``@subkernel``, ``@syscall`` and ``kernel_from_string`` decorate as in
  ARTIQ, so a file that merely defines kernels imports and is examined normally; the
  error comes when a kernel is **called**: ``UnsupportedARTIQFeature`` with one line,
  e.g. ``kernel: ARTIQ kernels are not supported by labpipe (used by Foo.run)``. An
  experiment whose kernels are never called runs.
- ``@portable``, ``@rpc`` and ``@host_only`` return the function unchanged: on the host
  ARTIQ runs them as plain Python too.
- The timeline (``delay``, ``delay_mu``, ``now_mu``, ``at_mu``, ``sequential``,
  ``parallel``, ``interleave``) fails when used, with one line naming it;
  ``watchdog(t)`` is a context manager doing nothing (ARTIQ's host default).
  ``set_time_manager`` and ``set_watchdog_factory`` are accepted and change nothing.
- The kernel types (``TInt32``, ``TList(TFloat)``, ...) are inert markers, so that
  annotations of kernels and RPCs evaluate; anything else done with them (an attribute,
  a method) fails with one line naming the type.
"""

from __future__ import annotations

import functools
from types import TracebackType
from typing import Any, Callable, Literal

from labpipe.language.exceptions import TerminationRequested

__all__ = ["kernel", "portable", "rpc", "subkernel", "syscall", "host_only",
           "kernel_from_string", "set_time_manager", "set_watchdog_factory",
           "TerminationRequested",
           "sequential", "parallel", "interleave", "delay_mu", "now_mu", "at_mu", "delay",
           "watchdog", "UnsupportedARTIQFeature",
           "RTIOUnderflow", "RTIOOverflow"]

TYPE_NAMES = ["TNone", "TTuple", "TBool", "TInt32", "TInt64", "TFloat", "TStr", "TBytes",
              "TByteArray", "TList", "TArray", "TRange32", "TRange64", "TVar"]


class UnsupportedARTIQFeature(NotImplementedError):
    """ARTIQ API that needs the core device (or its compiler), which labpipe lacks.

    The message is one line: ``WHAT: ... is not supported by labpipe (used by WHERE)``.
    """


class RTIOUnderflow(Exception):
    """ARTIQ's core-device exception, exported by ``artiq.experiment``; never raised by
    labpipe (there is no RTIO), defined so that ``except RTIOUnderflow`` still reads."""


class RTIOOverflow(Exception):
    """See ``RTIOUnderflow``."""


def _unsupported_call(what: str, description: str, function: Callable) -> Callable:
    where = getattr(function, "__qualname__", None) or getattr(function, "__name__", "?")

    @functools.wraps(function)
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsupportedARTIQFeature(
            f"{what}: {description} are not supported by labpipe (used by {where})")

    refuse.labpipe_unsupported = what  # type: ignore[attr-defined]
    return refuse


def _decorator(what: str, description: str) -> Callable:
    """A decorator usable bare (``@kernel``) or with arguments (``@kernel("core")``,
    ``@kernel(flags={...})``) that makes calls fail with one line."""

    def decorate(arg: Any = None, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        if callable(arg) and not args and not kwargs:
            return _unsupported_call(what, description, arg)
        return lambda function: _unsupported_call(what, description, function)

    decorate.__name__ = what
    decorate.__doc__ = f"ARTIQ's ``@{what}``: calls fail, see ``labpipe.language.kernels``."
    return decorate


kernel = _decorator("kernel", "ARTIQ kernels")
subkernel = _decorator("subkernel", "ARTIQ subkernels")
syscall = _decorator("syscall", "ARTIQ syscalls")


def _unchanged(arg: Any = None, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    if callable(arg) and not args and not kwargs:
        return arg
    return lambda function: function


def portable(arg: Any = None, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """ARTIQ's ``@portable``: on the host the function runs as plain Python."""
    return _unchanged(arg, *args, **kwargs)


def rpc(arg: Any = None, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """ARTIQ's ``@rpc``: a host function; called from the host it is a plain call."""
    return _unchanged(arg, *args, **kwargs)


def host_only(function: Callable) -> Callable:
    """ARTIQ's ``@host_only``: the function runs on the host, as always in labpipe."""
    return function


def kernel_from_string(parameters: Any, body_code: Any,
                       decorator: Callable[..., Any] = kernel) -> Callable[..., Any]:
    """ARTIQ's ``kernel_from_string``: the kernel it makes fails when called."""
    def kernel_from_string_fn(*args: Any, **kwargs: Any) -> None:
        pass
    return decorator(kernel_from_string_fn)


def set_time_manager(time_manager: Any) -> None:
    """Accepted for compatibility; labpipe has no kernel simulation to give it to."""


def set_watchdog_factory(factory: Any) -> None:
    """Accepted for compatibility; ``watchdog`` stays a no-op."""


def _timeline(name: str) -> UnsupportedARTIQFeature:
    return UnsupportedARTIQFeature(
        f"{name}: the ARTIQ RTIO timeline is not supported by labpipe (it has no core "
        "device)")


def delay_mu(duration: Any) -> None:
    """ARTIQ's timeline: fails in labpipe."""
    raise _timeline("delay_mu")


def now_mu() -> int:
    """ARTIQ's timeline: fails in labpipe."""
    raise _timeline("now_mu")


def at_mu(time: Any) -> None:
    """ARTIQ's timeline: fails in labpipe."""
    raise _timeline("at_mu")


def delay(duration: Any) -> None:
    """ARTIQ's timeline: fails in labpipe."""
    raise _timeline("delay")


class _Block:
    """``with sequential:`` / ``with parallel:``: fails when entered."""

    def __init__(self, name: str):
        self._name = name

    def __enter__(self) -> None:
        raise _timeline(self._name)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return f"<ARTIQ timeline block {self._name} (unsupported by labpipe)>"


sequential = _Block("sequential")
parallel = _Block("parallel")
interleave = _Block("interleave")


class _NoWatchdog:
    def __init__(self, timeout: Any):
        pass

    def __enter__(self) -> _NoWatchdog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        return False


def watchdog(timeout: Any) -> _NoWatchdog:
    """ARTIQ's ``watchdog``: not enforced (as in ARTIQ on the host)."""
    return _NoWatchdog(timeout)


class KernelType:
    """An inert marker for an ARTIQ kernel type (``TInt32``, ``TList(TFloat)``...):
    fine in annotations, anything else fails with one line naming it."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> KernelType:
        inner = ", ".join(repr(a) for a in args)
        return KernelType(f"{self._name}({inner})")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        raise UnsupportedARTIQFeature(
            f"{self._name}: ARTIQ kernel types are not supported by labpipe beyond "
            f"annotations (used: {self._name}.{attr})")

    def __repr__(self) -> str:
        return self._name


TYPES: dict[str, KernelType] = {name: KernelType(name) for name in TYPE_NAMES}
