"""Import experiment files, and find the experiment classes they define.

``import_file(path, prefix="file_import_")`` imports a Python file as a new module with a
name of its own (``file_import_<stem>_<n>``), so that importing a file twice, or two files
of the same name, gives independent modules. During the import the file's folder is first
on ``sys.path``, so the experiment can import the modules beside it; afterwards
``sys.path`` is restored and the modules imported from that folder are dropped from
``sys.modules`` (the experiment keeps its references to them), so that the next import of
another revision of the file imports its own siblings; ``sibling_files(module)`` lists
their files. The experiment module itself stays in ``sys.modules`` (``inspect``,
``pickle`` and ``dataclasses`` look it up there); ``forget_module`` removes it.

Consequence: a sibling module imported lazily at run time (``import helper`` inside
``run()``) is not found, as with ARTIQ; import siblings at the top of the file.

ARTIQ experiment files import unchanged: ``import_file`` first installs
``labpipe.language.artiq_alias`` (once per process), so that ``from artiq.experiment
import *`` gives labpipe's language where no real ``artiq`` is installed (a real one
always wins). Only the processes that import user code (workers, examiners,
``labpipe-run``) ever call ``import_file``, so only they answer for ``artiq``.

``get_experiment(module, class_name=None)`` returns the experiment class to run. Errors
are ``ExperimentLookupError`` (a ``LookupError``) with one line naming the file and what
to do.
"""

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import itertools
import os
import sys
import threading
import weakref
from types import ModuleType
from typing import Any

from labpipe.language import artiq_alias
from labpipe.language.environment import Experiment, is_experiment

__all__ = ["import_file", "forget_module", "sibling_files", "get_experiment",
           "list_experiments", "ExperimentLookupError", "NoExperimentError",
           "AmbiguousExperimentError"]

_counter = itertools.count(1)
_lock = threading.RLock()  # sys.path and sys.modules are process-wide
# Module made by import_file -> files of the siblings its import loaded.
_siblings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ExperimentLookupError(LookupError):
    """The experiment class asked for cannot be found in a file."""


class NoExperimentError(ExperimentLookupError):
    """No experiment class, or none of the name asked for."""


class AmbiguousExperimentError(ExperimentLookupError):
    """Several experiment classes, and no class name to choose one."""


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), folder]) == folder
    except ValueError:  # different drives
        return False


def _module_paths(module: ModuleType) -> list[str]:
    """Where a module comes from: its file, or its folders (namespace packages)."""
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return [file]
    return [p for p in getattr(module, "__path__", None) or [] if isinstance(p, str)]


def _added_names(count: int, last: str | None) -> list[str]:
    """The names added to ``sys.modules`` since it held ``count`` names, the newest
    ``last``, in insertion order.

    Dicts keep insertion order, so these are the names after ``last``. When ``last`` is
    still the ``count``-th name, no older name was removed meanwhile and the names after
    it are exactly the added ones: they are read from the end, without touching the
    hundreds of older names (in a worker forked from the template every object touched
    copies its memory page: a walk over all of them costs a fresh worker ~1 ms).
    Otherwise (the import removed modules from ``sys.modules``) every name is read: the
    names after ``last``, or, if ``last`` itself is gone, all names but the modules
    ``import_file`` made (they stay by design)."""
    added = len(sys.modules) - count
    if added >= 0:
        tail = list(itertools.islice(reversed(sys.modules), added + 1))
        if len(tail) == added + 1 and tail[-1] is last:
            return tail[-2::-1]
    names = list(sys.modules)
    if last is not None:
        try:
            return names[names.index(last) + 1:]
        except ValueError:
            pass
    return [n for n in names if sys.modules.get(n) not in _siblings]


def _drop_siblings(folder: str, added: list[str], keep: str) -> tuple[str, ...]:
    """Remove from sys.modules the modules of ``added`` (names added by the import)
    that come from folder, except ``keep`` and submodules of packages that were already
    imported. Returns the sorted real paths of their files."""
    files: set[str] = set()
    new = set(added)
    for name in added:
        if name == keep:
            continue
        top = name.partition(".")[0]
        if top not in new and top in sys.modules:  # a package imported before
            continue
        module = sys.modules.get(name)
        paths = [p for p in _module_paths(module) if _inside(p, folder)] if module else []
        if paths:
            del sys.modules[name]
            files.update(os.path.realpath(p) for p in paths if p.endswith(".py"))
    return tuple(sorted(files))


def _invalidate_finder(folder: str) -> None:
    """Forget the cached listing of folder only: ``importlib.invalidate_caches()`` would
    reset every finder on sys.path, which costs a fresh worker milliseconds."""
    finder = sys.path_importer_cache.get(folder)
    if finder is not None and hasattr(finder, "invalidate_caches"):
        finder.invalidate_caches()


def import_file(path: str | os.PathLike[str], prefix: str = "file_import_") -> ModuleType:
    """Import the Python file ``path`` as a fresh, uniquely named module.

    Errors raised by the file itself (``SyntaxError``, ``ImportError``, ...) propagate
    unchanged; a missing file is a ``FileNotFoundError``.
    """
    real = os.path.realpath(os.fspath(path))
    if not os.path.isfile(real):
        raise FileNotFoundError(f"experiment file {real} does not exist")
    artiq_alias.install()
    folder = os.path.dirname(real)
    stem = os.path.splitext(os.path.basename(real))[0]
    name = f"{prefix}{stem}_{next(_counter)}"
    loader = importlib.machinery.SourceFileLoader(name, real)
    spec = importlib.util.spec_from_file_location(name, real, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import {real}")
    module = importlib.util.module_from_spec(spec)
    with _lock:
        # not set(sys.modules): see _added_names
        count, last = len(sys.modules), next(reversed(sys.modules), None)
        sys.path.insert(0, folder)
        _invalidate_finder(folder)  # see sibling files written a moment ago
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            with contextlib.suppress(ValueError):  # the file may have removed it
                sys.path.remove(folder)  # only our entry: the file's own changes stay
            _siblings[module] = _drop_siblings(
                folder, _added_names(count, last), keep=name)
    return module


def sibling_files(module: ModuleType) -> tuple[str, ...]:
    """The real paths of the ``.py`` files from the module's folder that its import
    loaded (the siblings ``import_file`` then dropped from ``sys.modules``), sorted;
    empty for a module ``import_file`` did not make. A repository scan can use them to
    know when an examination is out of date."""
    return _siblings.get(module, ())


def forget_module(module: ModuleType) -> None:
    """Remove a module made by ``import_file`` from ``sys.modules``."""
    if sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]


def _is_concrete(cls: type[Experiment]) -> bool:
    return not inspect.isabstract(cls) and cls.run is not Experiment.run


def list_experiments(module: ModuleType) -> dict[str, type]:
    """``{attribute name: class}`` of the module's public experiment classes, in name
    order: experiment classes defined or imported there, whose names do not start with
    ``_``, which are not abstract and define ``run``. (The module's dict read directly:
    ``inspect.getmembers`` does the same through ``dir`` and ``getattr``, slower.)"""
    return {name: obj for name, obj in sorted(vars(module).items())
            if not name.startswith("_") and is_experiment(obj)
            and not obj.__name__.startswith("_") and _is_concrete(obj)}


def _file_of(module: ModuleType) -> str:
    return getattr(module, "__file__", None) or module.__name__


def get_experiment(module: ModuleType, class_name: str | None = None) -> type:
    """The experiment class of ``module``: the one named ``class_name``, or the only
    public experiment class when ``class_name`` is None. With ``class_name``, the
    module's classes are listed only for an error message: in a worker every object
    looked at costs a copied page."""
    where = _file_of(module)
    if class_name is None:
        experiments = list_experiments(module)
        if len(experiments) == 1:
            return next(iter(experiments.values()))
        if not experiments:
            raise NoExperimentError(
                f"{where} defines no experiment class (a public subclass of "
                f"EnvExperiment with a run() method)")
        raise AmbiguousExperimentError(
            f"{where} defines several experiments ({', '.join(experiments)}); "
            f"give the class name")
    cls: Any = getattr(module, class_name, None)
    if is_experiment(cls) and _is_concrete(cls):
        return cls
    listed = ", ".join(list_experiments(module)) or "none"
    if not is_experiment(cls):
        raise NoExperimentError(
            f"{where} has no experiment class {class_name!r}; experiments there: {listed}")
    raise NoExperimentError(
        f"{class_name!r} in {where} is abstract (it does not define run(), or "
        f"has abstract methods); experiments there: {listed}")
