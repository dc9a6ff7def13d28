"""Pure decisions of a repository scan: what to examine again, and what to publish.

A scan lists the repository (``{path: content id}``), reuses what it can from the last
scan and examines the rest. These functions make those decisions without processes or
I/O, so they are tested on their own:

- ``plan(candidates, listing, cache)``: a file is reused when the cache holds its
  ``(path, content id)`` and every repository module its import loaded (``deps``) still
  has the content id it had then; otherwise it is examined again. So editing a helper
  module re-examines the experiments that import it, and nothing else. Keys include the
  path because sibling imports depend on the folder a file is in.
- ``build_explist(results, subdir)``: the ``explist`` and ``explist_errors`` contents.
  Names follow ARTIQ: the experiment's display name, prefixed with its folder relative
  to the experiment subdirectory (``"calib/Rabi flop"``; the dashboard shows folders);
  ``/`` inside a display name becomes ``_``; a name already taken in its folder gets the
  first free numeric suffix (``Scan``, ``Scan1``, ``Scan2``). Files are taken in path
  order and classes in file order, so the same repository always gives the same names.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from labpipe.master.repository.examiner import Examined

__all__ = ["CacheEntry", "plan", "cache_entry", "build_explist"]

Key = tuple[str, str]


@dataclass(frozen=True)
class CacheEntry:
    """The outcome of examining one file, with the content ids its import depended on."""

    examined: Examined
    deps: dict[str, str | None] = field(default_factory=dict)


def cache_entry(examined: Examined, listing: dict[str, str]) -> CacheEntry:
    """Record ``examined`` with the current content ids of its dependencies."""
    return CacheEntry(examined, {dep: listing.get(dep) for dep in examined.deps})


def plan(candidates: dict[str, str], listing: dict[str, str],
         cache: dict[Key, CacheEntry]) -> tuple[dict[str, CacheEntry], list[str]]:
    """``(reused {path: entry}, paths to examine)`` for the files in ``candidates``."""
    reused: dict[str, CacheEntry] = {}
    todo: list[str] = []
    for path in sorted(candidates):
        entry = cache.get((path, candidates[path]))
        if entry is not None and all(listing.get(dep) == content_id
                                     for dep, content_id in entry.deps.items()):
            reused[path] = entry
        else:
            todo.append(path)
    return reused, todo


def _folder_prefix(path: str, subdir: str) -> str:
    folder = posixpath.dirname(path)
    if subdir:
        folder = posixpath.relpath(folder, subdir) if folder != subdir else ""
    return folder + "/" if folder and folder != "." else ""


def build_explist(results: dict[str, Examined], subdir: str = ""
                  ) -> tuple[dict[str, dict], dict[str, str]]:
    """``(explist, errors)`` from the examination results of every file."""
    explist: dict[str, dict] = {}
    errors: dict[str, str] = {}
    subdir = subdir.strip("/")
    for path in sorted(results):
        examined = results[path]
        if not examined.ok:
            errors[path] = examined.error or "unknown error"
            continue
        prefix = _folder_prefix(path, subdir)
        for class_name, desc in (examined.description or {}).items():
            display = str(desc.get("name") or class_name).replace("/", "_")
            name = prefix + display
            if name in explist:
                i = 1
                while f"{name}{i}" in explist:
                    i += 1
                name = f"{name}{i}"
            explist[name] = {
                "file": path,
                "class_name": class_name,
                "arginfo": desc.get("arginfo", {}),
                "argument_ui": desc.get("argument_ui"),
                "scheduler_defaults": desc.get("scheduler_defaults", {}),
            }
    return explist, errors
