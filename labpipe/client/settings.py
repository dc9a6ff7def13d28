"""Where ``labpipe-client`` finds its master: the server, its ports, the TLS files.

Each setting is taken from the first place that gives it:

1. the command line (``-s/--server``, ``--port``, ``--port-notify``,
   ``--port-broadcast``, ``--ssl CERT KEY PEER``, ``--lock-key``, ``--user``,
   ``--group``);
2. the environment: ``LABPIPE_SERVER``, ``LABPIPE_PORT_CONTROL``,
   ``LABPIPE_PORT_NOTIFY``, ``LABPIPE_PORT_BROADCAST``, ``LABPIPE_LOCK_KEY``,
   ``LABPIPE_USER``, ``LABPIPE_GROUP``;
3. the lab's ``labpipe.toml`` (in the current folder or the nearest folder above it):
   ``[client] server``, ``lock_key``, ``user``, ``group``, ``[ports]``, ``[client.tls]``;
4. the user's ``client.toml`` (``$XDG_CONFIG_HOME/labpipe/client.toml``, by default
   ``~/.config/labpipe/client.toml``), which may hold only ``[client]`` and ``[ports]``;
5. ARTIQ's defaults: 127.0.0.1, ports 3251, 3250 and 1067, plain TCP.

TLS file paths in a file are relative to that file's folder. A bad file or variable is
a ``SettingsError`` naming it (one line; exit code 2).
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from labpipe.config import CLIENT_SECTIONS, CONFIG_FILE, ConfigError, LabConfig, load_file
from labpipe.protocol.tls import TLSFiles

__all__ = ["ConnectionSettings", "SettingsError", "resolve", "user_config_path",
           "find_lab_config", "DEFAULTS", "ENVIRONMENT"]

#: ARTIQ's defaults.
DEFAULTS = {"server": "127.0.0.1", "control": 3251, "notify": 3250, "broadcast": 1067}

#: The environment variable of each setting.
ENVIRONMENT = {"server": "LABPIPE_SERVER", "control": "LABPIPE_PORT_CONTROL",
               "notify": "LABPIPE_PORT_NOTIFY", "broadcast": "LABPIPE_PORT_BROADCAST",
               "lock_key": "LABPIPE_LOCK_KEY", "user": "LABPIPE_USER",
               "group": "LABPIPE_GROUP"}
_WORDS = ("lock_key", "user", "group")


class SettingsError(ValueError):
    """A setting cannot be used (a bad variable or file); one line."""


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the master is, resolved."""

    server: str
    port_control: int
    port_notify: int
    port_broadcast: int
    tls: TLSFiles | None = None
    #: sent with every call (``docs/access.md``): the lock's key, who the client is
    lock_key: str | None = None
    user: str | None = None
    group: str | None = None


def user_config_path(environ: Mapping[str, str] = os.environ) -> str:
    """The user's ``client.toml``."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "labpipe", "client.toml")


def find_lab_config(start: str) -> str | None:
    """The ``labpipe.toml`` in start or the nearest folder above it, or None."""
    folder = os.path.abspath(start)
    while True:
        path = os.path.join(folder, CONFIG_FILE)
        if os.path.isfile(path):
            return path
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _port(text: str, where: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise SettingsError(f"{where}: expected a port number from 1 to 65535, "
                            f"not {text!r}")
    return port


def _from_file(config: LabConfig, folder: str) -> dict[str, object]:
    """The settings a file gives (only those it gives)."""
    given: dict[str, object] = {}
    if config.client.server is not None:
        given["server"] = config.client.server
    for name in _WORDS:
        if getattr(config.client, name) is not None:
            given[name] = getattr(config.client, name)
    for name in ("control", "notify", "broadcast"):
        port = getattr(config.ports, name)
        if port is not None:
            given[name] = port
    tls = config.client.tls
    if tls is not None:
        given["tls"] = TLSFiles(*(os.path.expanduser(p) for p in (tls.cert, tls.key, tls.peer))
                                ).relative_to(folder)
    return given


def _load(path: str | None, sections: frozenset[str] | None) -> dict[str, object]:
    if path is None:
        return {}
    try:
        config = load_file(path, sections)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    return {} if config is None else _from_file(config, os.path.dirname(path))


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ,
            cwd: str | None = None) -> ConnectionSettings:
    """The settings for the command line args (see the module docstring)."""
    flags: dict[str, object] = {
        "server": args.server, "control": args.port, "notify": args.port_notify,
        "broadcast": args.port_broadcast, "tls": TLSFiles.from_args(args.ssl),
        **{name: getattr(args, name, None) for name in _WORDS}}
    env: dict[str, object] = {}
    for name, variable in ENVIRONMENT.items():
        text = environ.get(variable)
        if text:
            env[name] = (text.strip() if name in ("server", *_WORDS)
                         else _port(text, variable))
    places = [{k: v for k, v in flags.items() if v is not None}, env,
              _load(find_lab_config(cwd or os.getcwd()), None),
              _load(user_config_path(environ), CLIENT_SECTIONS), DEFAULTS]

    def first(name: str) -> object:
        return next((place[name] for place in places if name in place), None)

    server, control, notify, broadcast, tls = (
        first(name) for name in ("server", "control", "notify", "broadcast", "tls"))
    assert isinstance(server, str) and isinstance(control, int)
    assert isinstance(notify, int) and isinstance(broadcast, int)
    assert tls is None or isinstance(tls, TLSFiles)
    words = [first(name) for name in _WORDS]
    assert all(w is None or isinstance(w, str) for w in words)
    return ConnectionSettings(server, control, notify, broadcast, tls,
                              *words)  # type: ignore[arg-type]
