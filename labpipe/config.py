"""``labpipe.toml``: the lab's configuration file, typed.

The file sits in the lab directory and is read with ``tomllib``; a missing file means
every default. Each section is a frozen dataclass below, whose fields are the section's
keys (their annotations are the accepted types); ``LabConfig`` holds one of each. A
new section is a new dataclass and one field of ``LabConfig``: the loader needs no
change. Command-line flags win over the file (the programs apply them).

Sections today:

``[security]`` (what local clients may make the master read or run):

- ``allow_files_anywhere`` (bool, default false): raw-file submissions (an expid
  ``file`` without ``repo_rev``) and ``experiment_db.examine(path,
  use_repository=False)`` may name any file on the master's machine, as in ARTIQ.
  Otherwise only files inside the lab directory, the repository and ``file_folders``.
- ``file_folders`` (list of paths, default empty): more folders allowed for raw files
  (relative ones are relative to the lab directory).
- ``allow_content`` (bool, default true): submission by content (``expid["content"]``,
  ``artiq_client submit --content``) is accepted; false refuses it.

``[examine]`` (the examining processes, which also check submitted content):

- ``timeout`` (seconds, default 10): per file, or per content check.
- ``memory_mb`` (default 2048): address space one examination may add.
- ``content_memory_mb`` (default 512): address space compiling content may add.

``[ports]`` (the master's ports; the master listens on them and clients of this lab
connect to them): ``control`` (3251), ``notify`` (3250), ``broadcast`` (1067),
``logging`` (1066), each 1 to 65535.

``[master]`` (the master's own settings; its command-line flags win):

- ``bind`` (list of addresses, default ``["127.0.0.1", "::1"]``; ``"*"`` for all).
- ``hold`` (list of pipeline names): pipelines held at every start, before any run of
  the restored schedule can start (released as usual with ``release``).
- ``[master.tls]`` ``cert``, ``key``, ``peer``: mutual TLS on every port, as ``--ssl
  CERT KEY PEER`` (relative paths are relative to the lab directory).
- ``dask_scheduler`` (string): the lab's Dask cluster for ``scheduler.offload`` and
  ``@offload_analyze`` (``docs/dask.md``): a scheduler's address (``tcp://host:8786``),
  or ``"local"``: the master starts a ``distributed.LocalCluster`` and stops it with
  itself. As ``--dask-scheduler``.

``[qserver]`` (bluesky-queueserver's 0MQ API, ``labpipe.qserver``; off by default):

- ``enabled`` (bool, default false): serve it (as ``labpipe-master --qserver``).
- ``control_addr`` (default ``tcp://127.0.0.1:60615``), ``info_addr`` (default
  ``tcp://127.0.0.1:60625``): the 0MQ addresses; ``pipeline`` (default ``main``): the
  pipeline that is "the queue".

``[client]`` (for ``labpipe-client`` run in this lab, or in ``~/.config/labpipe/
client.toml``, which may hold only ``[client]`` and ``[ports]``):

- ``server`` (host name or address of the master, default 127.0.0.1).
- ``[client.tls]`` ``cert``, ``key``, ``peer``: as the client's ``--ssl CERT KEY PEER``
  (relative paths are relative to the file's folder).
- ``lock_key``, ``user``, ``group``: as the client's ``--lock-key``, ``--user``,
  ``--group`` (``docs/access.md``).

``[functions]`` (functions run in a worker, ``docs/functions.md``):

- ``module`` (a module name, e.g. ``"lab_functions"``): the lab's functions module,
  next to ``device_db.py`` (in the lab directory) or in the repository. The top-level
  key ``functions = "lab_functions"`` (before any table) says the same.
- ``max_background`` (default 4): background calls running at once; more are refused.

``[lock]`` (the master's queue lock, ``docs/access.md``):

- ``emergency_key`` (string) or ``emergency_key_file`` (a file whose first line is the
  key; relative to the lab directory): a key that unlocks any lock and passes any lock.

``[permissions]`` (users, groups and what each may do, ``docs/access.md``; off unless
``enabled = true``):

- ``enabled`` (bool, default false), ``default_group`` (the group of a client that
  states none), ``tls_group_field`` (the certificate subject field naming the group,
  default ``organizationalUnitName``), ``users`` (a table: user name -> group).
- ``[permissions.groups.NAME]``: ``allowed_experiments``, ``forbidden_experiments``,
  ``allowed_plans``, ``forbidden_plans``, ``allowed_devices``, ``forbidden_devices``
  (lists of patterns), and the rights ``edit_queue``, ``write_datasets``,
  ``terminate``, ``submit_content``, ``call_functions`` (bools, default false).

A key that the file leaves out is None in the dataclass ("not said"): the programs
fill in their defaults, so that settings from several places (flags, environment,
files) can be merged key by key.

Every error is a ``ConfigError`` (a ``ValueError``) with one line naming the file, the
section and the key, e.g. ``labpipe.toml: [security] allow_content: expected true or
false, not 'yes'``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["CONFIG_FILE", "ConfigError", "LabConfig", "SecurityConfig", "ExamineConfig",
           "PortsConfig", "MasterConfig", "ClientConfig", "QServerConfig", "TLSConfig",
           "load_config", "config_from_dict", "load_file", "CLIENT_SECTIONS", "LockConfig",
           "PermissionsConfig", "GroupConfig", "FunctionsConfig"]

#: The file's name in the lab directory.
CONFIG_FILE = "labpipe.toml"

#: The sections a user's ``client.toml`` may hold.
CLIENT_SECTIONS = frozenset({"client", "ports"})


class ConfigError(ValueError):
    """``labpipe.toml`` cannot be used; the message (one line) says where and why."""


def _port() -> Any:
    """A port key: left out (None), or 1 to 65535."""
    return field(default=None, metadata={"range": (1, 65535)})


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: see the module docstring."""

    allow_files_anywhere: bool = False
    file_folders: tuple[str, ...] = ()
    allow_content: bool = True


@dataclass(frozen=True)
class ExamineConfig:
    """``[examine]``: see the module docstring."""

    timeout: float = 10.0
    memory_mb: int = 2048
    content_memory_mb: int = 512


@dataclass(frozen=True)
class TLSConfig:
    """``[master.tls]`` or ``[client.tls]``: the three files of ``--ssl``."""

    cert: str
    key: str
    peer: str


@dataclass(frozen=True)
class PortsConfig:
    """``[ports]``: see the module docstring (None: not in the file)."""

    control: int | None = _port()
    notify: int | None = _port()
    broadcast: int | None = _port()
    logging: int | None = _port()


@dataclass(frozen=True)
class MasterConfig:
    """``[master]``: see the module docstring (None: not in the file)."""

    bind: tuple[str, ...] | None = field(default=None, metadata={"nonempty": True})
    hold: tuple[str, ...] = field(default=(), metadata={"nonempty": True})
    tls: TLSConfig | None = None
    dask_scheduler: str | None = field(default=None, metadata={"nonempty": True})


@dataclass(frozen=True)
class QServerConfig:
    """``[qserver]``: see the module docstring (None: not in the file)."""

    enabled: bool = False
    control_addr: str | None = None
    info_addr: str | None = None
    pipeline: str | None = None


@dataclass(frozen=True)
class ClientConfig:
    """``[client]``: see the module docstring (None: not in the file)."""

    server: str | None = None
    tls: TLSConfig | None = None
    lock_key: str | None = None
    user: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class FunctionsConfig:
    """``[functions]``: see the module docstring (None: no functions module)."""

    module: str | None = field(default=None, metadata={"nonempty": True})
    max_background: int = field(default=4, metadata={"range": (1, 64)})


@dataclass(frozen=True)
class LockConfig:
    """``[lock]``: see the module docstring."""

    emergency_key: str | None = field(default=None, metadata={"nonempty": True})
    emergency_key_file: str | None = field(default=None, metadata={"nonempty": True})


@dataclass(frozen=True)
class GroupConfig:
    """``[permissions.groups.NAME]``: what one group may run and do."""

    allowed_experiments: tuple[str, ...] = ("*",)
    forbidden_experiments: tuple[str, ...] = ()
    allowed_plans: tuple[str, ...] = ("*",)
    forbidden_plans: tuple[str, ...] = ()
    allowed_devices: tuple[str, ...] = ("*",)
    forbidden_devices: tuple[str, ...] = ()
    edit_queue: bool = False
    write_datasets: bool = False
    terminate: bool = False
    submit_content: bool = False
    call_functions: bool = False


@dataclass(frozen=True)
class PermissionsConfig:
    """``[permissions]``: see the module docstring."""

    enabled: bool = False
    default_group: str | None = field(default=None, metadata={"nonempty": True})
    tls_group_field: str = "organizationalUnitName"
    users: dict[str, str] = field(default_factory=dict)
    groups: dict[str, GroupConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class LabConfig:
    """The whole file: one field per section (the field name is the section name)."""

    security: SecurityConfig = field(default_factory=SecurityConfig)
    examine: ExamineConfig = field(default_factory=ExamineConfig)
    ports: PortsConfig = field(default_factory=PortsConfig)
    master: MasterConfig = field(default_factory=MasterConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)
    qserver: QServerConfig = field(default_factory=QServerConfig)
    functions: FunctionsConfig = field(default_factory=FunctionsConfig)


_DESCRIPTIONS = {bool: "true or false", int: "an integer", float: "a number",
                 str: "a string"}

_CHECKS: dict[type, typing.Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str)}


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """value as the annotated type, or ConfigError naming where."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:  # X | None: the file has X
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_DESCRIPTIONS[item]}s, "
                              f"not {value!r}")
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if not _CHECKS[annotation](value):
        raise ConfigError(f"{where}: expected {_DESCRIPTIONS[annotation]}, not {value!r}")
    return float(value) if annotation is float else value


_Section = TypeVar("_Section", bound="DataclassInstance")


def _section(cls: type[_Section], table: Any, name: str, source: str) -> _Section:
    """One table as the dataclass cls (a field whose type is a dataclass is a
    sub-table, ``[name.field]``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, not {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: [{name}] unknown key {unknown[0]!r} "
                          f"(valid keys: {', '.join(sorted(fields))})")
    required = [f.name for f in fields.values() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in table]
    if required:
        raise ConfigError(f"{source}: [{name}] needs the key {required[0]!r} "
                          f"(keys: {', '.join(fields)})")
    values = {}
    for key, value in table.items():
        if typing.get_origin(hints[key]) is dict:
            values[key] = _table(hints[key], value, f"{name}.{key}", source)
            continue
        nested = _table_type(hints[key])
        values[key] = (_section(nested, value, f"{name}.{key}", source) if nested
                       else _convert(value, hints[key], f"{source}: [{name}] {key}"))
    for key, value in values.items():
        if fields[key].metadata.get("nonempty") and value == "":
            raise ConfigError(f"{source}: [{name}] {key}: must not be empty")
        if fields[key].metadata.get("nonempty") and isinstance(value, tuple) and "" in value:
            raise ConfigError(f"{source}: [{name}] {key}: names must not be empty, "
                              f"not {list(value)!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = fields[key].metadata.get("range", (None, None))
            if low is not None and not low <= value <= high:
                raise ConfigError(f"{source}: [{name}] {key}: must be from {low} to "
                                  f"{high}, not {value!r}")
            if value <= 0:
                raise ConfigError(f"{source}: [{name}] {key}: must be positive, "
                                  f"not {value!r}")
    return cls(**values)


def _table(annotation: Any, table: Any, name: str, source: str) -> dict[str, Any]:
    """A table of any keys (``dict[str, X]``): each value an X, or a sub-table when X
    is a dataclass."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, not {table!r}")
    _key, item = typing.get_args(annotation)
    nested = _table_type(item)
    result: dict[str, Any] = {}
    for key, value in table.items():
        if not key:
            raise ConfigError(f"{source}: [{name}] names must not be empty")
        result[key] = (_section(nested, value, f"{name}.{key}", source) if nested
                       else _convert(value, item, f"{source}: [{name}] {key}"))
    return result


def _table_type(annotation: Any) -> Any:
    """The dataclass of a sub-table field (annotated with it, or with it or None)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def config_from_dict(data: dict, source: str = CONFIG_FILE,
                     sections: frozenset[str] | None = None) -> LabConfig:
    """A ``LabConfig`` from the parsed TOML tables (``source`` names them in errors);
    ``sections``: the only sections allowed (None: all)."""
    if isinstance(data.get("functions"), str):  # the top-level shorthand
        data = {**data, "functions": {"module": data["functions"]}}
    known = {f.name for f in dataclasses.fields(LabConfig)}
    allowed = known if sections is None else known & sections
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}] "
                          f"(valid sections: {', '.join(sorted(allowed))})")
    hints = typing.get_type_hints(LabConfig)
    return LabConfig(**{name: _section(hints[name], table, name, source)
                        for name, table in data.items()})


def load_file(path: str, sections: frozenset[str] | None = None) -> LabConfig | None:
    """The configuration in the file at path (None when there is no such file); its
    errors name the file as given."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return config_from_dict(data, path, sections)


def load_config(lab_dir: str, filename: str = CONFIG_FILE) -> LabConfig:
    """The configuration of the lab in ``lab_dir`` (defaults when there is no file)."""
    path = os.path.join(lab_dir, filename)
    try:
        config = load_file(path)
    except ConfigError as exc:  # errors name the file as the lab knows it
        raise ConfigError(str(exc).replace(path, filename, 1)) from None
    return LabConfig() if config is None else config
