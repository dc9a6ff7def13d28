"""Which entries of the device database this host runs, and their command lines.

Pure decisions (ARTIQ's facts, our code):

- An entry is a controller of this host when it is a dict with ``"type": "controller"``,
  a ``command``, and a ``host`` whose addresses (``getaddrinfo``) share one with the
  host filter's: by default the local address of the manager's connection to the
  master, or ``--host-filter NAME``. All loopback addresses (``127.0.0.0/8``, ``::1``,
  hence ``localhost``) count as one, so ``::1``, ``localhost`` and ``127.0.0.1`` entries
  all run under a manager whose master is on the same host.
- ``command`` is formatted with ``{name}`` (the key), ``{bind}`` (the host filter) and
  every key of the entry (``{port}``, ``{host}``, ...), then split shell-free
  (``shlex.split``); no shell ever sees it. Only plain field names are allowed (no
  ``{port.attr}`` or ``{x[0]}``).
- Per-entry timing keys, ARTIQ's names and defaults: ``retry_timer`` (5 s),
  ``retry_timer_backoff`` (1.1), ``ping_timer`` (30 s), ``ping_timeout`` (30 s),
  ``term_timeout`` (30 s).

A bad entry (no port, a command that does not format or split) is ``EntryError`` with
one line naming the entry; the manager logs it and runs the others.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Resolves a host name to its addresses (empty when it does not resolve).
Resolver = Callable[[str], set[str]]

_LOOPBACK = "loopback"


class EntryError(ValueError):
    """A controller entry of the device database that cannot be run (one line)."""


@dataclass(frozen=True)
class ControllerSpec:
    """One controller as the manager runs it; equal specs need no restart."""
    name: str
    host: str
    port: int
    argv: tuple[str, ...]
    target: str | None = None
    retry_timer: float = 5.0
    retry_timer_backoff: float = 1.1
    ping_timer: float = 30.0
    ping_timeout: float = 30.0
    term_timeout: float = 30.0


def resolve(host: str) -> set[str]:
    """The addresses of host, loopback ones as one token; empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return set()
    return {_normalise(str(info[4][0])) for info in infos}


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address)
                          and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback):
        return _LOOPBACK
    return str(ip)


class _PlainFormatter(string.Formatter):
    """str.format restricted to plain field names."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if not field_name.isidentifier():
            raise EntryError(f"field {{{field_name}}} is not a plain name")
        return super().get_field(field_name, args, kwargs)


def command_line(name: str, entry: Mapping[str, Any], bind: str) -> tuple[str, ...]:
    """The argument list of entry's ``command`` after the substitutions."""
    command = entry.get("command")
    if not isinstance(command, str):
        raise EntryError(f"controller {name!r}: command must be a string")
    fields = {**{k: v for k, v in entry.items() if isinstance(k, str)},
              "name": name, "bind": bind}
    try:
        text = _PlainFormatter().format(command, **fields)
    except EntryError as exc:
        raise EntryError(f"controller {name!r}: command {command!r}: {exc}") from None
    except (KeyError, IndexError, ValueError) as exc:
        raise EntryError(f"controller {name!r}: command {command!r} does not format: "
                         f"unknown or bad field {exc}") from None
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise EntryError(f"controller {name!r}: command {text!r}: {exc}") from None
    if not argv:
        raise EntryError(f"controller {name!r}: command is empty")
    return tuple(argv)


def _number(name: str, entry: Mapping[str, Any], key: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EntryError(f"controller {name!r}: {key} must be a number >= 0, got {value!r}")
    return float(value)


def spec_of(name: str, entry: Mapping[str, Any], bind: str) -> ControllerSpec:
    """The ControllerSpec of a controller entry; EntryError when it cannot run."""
    port = entry.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise EntryError(f"controller {name!r}: port must be a TCP port, got {port!r}")
    target = entry.get("target")
    if target is not None and not isinstance(target, str):
        raise EntryError(f"controller {name!r}: target must be a string")
    return ControllerSpec(
        name=name, host=str(entry["host"]), port=port,
        argv=command_line(name, entry, bind), target=target,
        retry_timer=_number(name, entry, "retry_timer", 5.0),
        retry_timer_backoff=max(1.0, _number(name, entry, "retry_timer_backoff", 1.1)),
        ping_timer=_number(name, entry, "ping_timer", 30.0),
        ping_timeout=_number(name, entry, "ping_timeout", 30.0),
        term_timeout=_number(name, entry, "term_timeout", 30.0))


def is_controller(entry: Any) -> bool:
    """Whether a device-database value is a controller entry a manager could run."""
    return (isinstance(entry, dict) and entry.get("type") == "controller"
            and "command" in entry and isinstance(entry.get("host"), str))


def select(device_db: Mapping[str, Any], host_filter: str,
           resolver: Resolver = resolve) -> tuple[dict[str, ControllerSpec], list[str]]:
    """This host's controllers of device_db, and one line per entry refused."""
    own = resolver(host_filter)
    cache: dict[str, set[str]] = {}
    chosen: dict[str, ControllerSpec] = {}
    errors: list[str] = []
    for name, entry in device_db.items():
        if not isinstance(name, str) or not is_controller(entry):
            continue
        host = entry["host"]
        if host not in cache:
            cache[host] = resolver(host)
        if not own & cache[host]:
            continue
        try:
            chosen[name] = spec_of(name, entry, host_filter)
        except EntryError as exc:
            errors.append(str(exc))
    return chosen, errors
