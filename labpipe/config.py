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

Every error is a ``ConfigError`` (a ``ValueError``) with one line naming the file, the
section and the key, e.g. ``labpipe.toml: [security] allow_content: expected true or
false, not 'yes'``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["CONFIG_FILE", "ConfigError", "LabConfig", "SecurityConfig", "ExamineConfig",
           "load_config", "config_from_dict"]

#: The file's name in the lab directory.
CONFIG_FILE = "labpipe.toml"


class ConfigError(ValueError):
    """``labpipe.toml`` cannot be used; the message (one line) says where and why."""


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
class LabConfig:
    """The whole file: one field per section (the field name is the section name)."""

    security: SecurityConfig = field(default_factory=SecurityConfig)
    examine: ExamineConfig = field(default_factory=ExamineConfig)


_DESCRIPTIONS = {bool: "true or false", int: "an integer", float: "a number",
                 str: "a string"}


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """value as the annotated type, or ConfigError naming where."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_DESCRIPTIONS[item]}s, "
                              f"not {value!r}")
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[annotation]
    if not ok(value):
        raise ConfigError(f"{where}: expected {_DESCRIPTIONS[annotation]}, not {value!r}")
    return float(value) if annotation is float else value


_Section = TypeVar("_Section", bound="DataclassInstance")


def _section(cls: type[_Section], table: Any, name: str, source: str) -> _Section:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, not {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ConfigError(f"{source}: [{name}] unknown key {unknown[0]!r} "
                          f"(valid keys: {', '.join(sorted(fields))})")
    values = {key: _convert(value, hints[key], f"{source}: [{name}] {key}")
              for key, value in table.items()}
    checked = cls(**values)
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"{source}: [{name}] {key}: must be positive, not {value!r}")
    return checked


def config_from_dict(data: dict, source: str = CONFIG_FILE) -> LabConfig:
    """A ``LabConfig`` from the parsed TOML tables (``source`` names them in errors)."""
    sections = {f.name: f for f in dataclasses.fields(LabConfig)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}] "
                          f"(valid sections: {', '.join(sorted(sections))})")
    hints = typing.get_type_hints(LabConfig)
    return LabConfig(**{name: _section(hints[name], table, name, source)
                        for name, table in data.items()})


def load_config(lab_dir: str, filename: str = CONFIG_FILE) -> LabConfig:
    """The configuration of the lab in ``lab_dir`` (defaults when there is no file)."""
    path = os.path.join(lab_dir, filename)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return LabConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{filename}: cannot be read: {exc}") from None
    return config_from_dict(data, filename)
