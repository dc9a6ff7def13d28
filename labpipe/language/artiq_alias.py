"""``import artiq.experiment`` answered by labpipe's language, in labpipe's own processes.

ARTIQ experiment files start with ``from artiq.experiment import *``. Where the real
``artiq`` package is not installed, ``install()`` lets that import (and ``artiq.language``
with its submodules ``environment``, ``scan``, ``units``, ``core``, ``types``) give
labpipe's classes, so the file runs unchanged. It is called by the processes that import
user code (workers, examiners, ``labpipe-run``: see ``worker/importer.py``), never at
import of labpipe, and nothing named ``artiq`` is installed on disk.

Rules:

- A real ``artiq`` always wins: the finder is appended at the **end** of
  ``sys.meta_path``, so it is asked only after the path finders found no ``artiq``
  anywhere on ``sys.path``; and it answers for a submodule only when the ``artiq`` in
  ``sys.modules`` is its own.
- Each alias is a module of its own (``artiq.language.environment.__name__`` is
  ``"artiq.language.environment"``) holding labpipe's objects: ``artiq.experiment.
  EnvExperiment is labpipe.language.EnvExperiment``, so labpipe finds the experiment
  classes, and ``TerminationRequested`` is the exception ``scheduler.pause()`` raises.
- The names are ARTIQ's (its ``__all__`` lists): the host-side ones are labpipe's, the
  core-device ones (``kernel``, ``delay``, ``TInt32``, ...) come from
  ``labpipe.language.kernels`` and fail with one line when used (see there).
- Any other ``artiq.*`` module (``artiq.coredevice.ttl``, ``artiq.master...``) is a
  ``ModuleNotFoundError`` with one line naming it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

from labpipe.language import argument_managers, arguments, environment, exceptions
from labpipe.language import kernels, scans, units

__all__ = ["install", "uninstall", "installed", "ALIASES", "ArtiqAliasFinder"]

_ENVIRONMENT = ["NoDefault", "DefaultMissing", "PYONValue", "BooleanValue",
                "EnumerationValue", "NumberValue", "StringValue", "HasEnvironment",
                "Experiment", "EnvExperiment", "CancelledArgsError"]
_CORE = ["kernel", "portable", "rpc", "subkernel", "syscall", "host_only",
         "kernel_from_string", "set_time_manager", "set_watchdog_factory",
         "TerminationRequested", "sequential", "parallel", "interleave", "delay_mu",
         "now_mu", "at_mu", "delay", "watchdog"]
_SCAN = ["ScanObject", "NoScan", "RangeScan", "CenterScan", "ExplicitScan", "Scannable",
         "MultiScanManager"]
_UNITS = list(units.__all__)
_TYPES = list(kernels.TYPE_NAMES)
_LANGUAGE = _CORE + _TYPES + _ENVIRONMENT + _UNITS + _SCAN
_COREDEVICE = ["RTIOUnderflow", "RTIOOverflow"]


def _namespace() -> dict[str, object]:
    found: dict[str, object] = dict(kernels.TYPES)
    for module in (kernels, units, scans, exceptions, arguments, environment,
                   argument_managers):
        found.update({name: getattr(module, name) for name in dir(module)
                      if not name.startswith("_")})
    return found


#: Alias module name -> (names it exports, extra names it holds, is a package).
ALIASES: dict[str, tuple[list[str], list[str], bool]] = {
    "artiq": ([], [], True),
    "artiq.experiment": (_LANGUAGE + _COREDEVICE, [], False),
    "artiq.language": (_LANGUAGE, [], True),
    "artiq.language.core": (_CORE, ["UnsupportedARTIQFeature"], False),
    "artiq.language.types": (_TYPES, [], False),
    "artiq.language.environment": (
        _ENVIRONMENT, ["TraceArgumentManager", "ProcessArgumentManager"], False),
    "artiq.language.units": (_UNITS, [], False),
    "artiq.language.scan": (_SCAN, [], False),
}


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a plain new module

    def exec_module(self, module: ModuleType) -> None:
        exported, extra, _ = ALIASES[module.__name__]
        namespace = _namespace()
        module.__dict__.update({name: namespace[name] for name in exported + extra})
        module.__dict__["__all__"] = list(exported)
        module.__doc__ = (f"labpipe's answer for {module.__name__} (labpipe.language."
                          "artiq_alias): ARTIQ's names, labpipe's objects.")


class ArtiqAliasFinder(importlib.abc.MetaPathFinder):
    """Finds the ``artiq`` aliases of ``ALIASES`` when no real ``artiq`` exists."""

    _loader = _AliasLoader()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top != "artiq":
            return None
        if fullname != "artiq":
            parent_spec = getattr(sys.modules.get("artiq"), "__spec__", None)
            if parent_spec is None or not isinstance(parent_spec.loader, _AliasLoader):
                return None  # a real artiq: its own finders answer (or fail)
        if fullname not in ALIASES:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: labpipe answers only for artiq.experiment "
                "and artiq.language (host-side ARTIQ); install ARTIQ for the rest",
                name=fullname)
        is_package = ALIASES[fullname][2]
        spec = importlib.machinery.ModuleSpec(fullname, self._loader, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = []
        return spec


_finder = ArtiqAliasFinder()
_lock = threading.Lock()


def install() -> None:
    """Append the finder to ``sys.meta_path`` (once; later calls do nothing)."""
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.append(_finder)


def uninstall() -> None:
    """Remove the finder and the alias modules it made (tests use it)."""
    with _lock:
        while _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        for name in list(sys.modules):
            module = sys.modules[name]
            spec = getattr(module, "__spec__", None)
            if spec is not None and isinstance(spec.loader, _AliasLoader):
                del sys.modules[name]


def installed() -> bool:
    """Whether the finder is in ``sys.meta_path``."""
    return _finder in sys.meta_path
