"""The experiment database: the ``experiment_db`` target and the ``explist`` notifiers.

``ExperimentDB`` owns everything clients see of the repository:

- ``explist``: ``{name: {"file", "class_name", "arginfo", "argument_ui",
  "scheduler_defaults"}}`` (names from ``scan.build_explist``; ``file`` relative to the
  repository root), published as the fewest mods (``publish.sync_dict``);
- ``explist_status``: ``{"scanning": bool, "cur_rev": str}``;
- ``explist_errors`` (a labpipe addition): ``{file: reason}`` for every file under the
  experiment subdirectory that could not be examined; no file is dropped silently.

Scans: ``scan_repository`` waits for a scan that starts after the request;
``scan_repository_async`` only requests one. Requests that arrive while a scan runs are
merged into exactly one more scan after it (never lost, never skipped); when merged
requests name different revisions, the latest request wins (None: HEAD at scan time).
A revision given explicitly is resolved at once, so an unknown one raises
``LookupError`` to its caller. A scan lists the revision, reuses the descriptions of
files whose content (and whose repository imports) did not change, examines the others
in parallel worker processes, then publishes ``explist``, ``explist_errors``, and last
``cur_rev``, so a subscriber that sees the new ``cur_rev`` has the matching list.
The database holds a checkout of ``cur_rev`` (``request_rev``) for as long as it is
current.

Clients reach the database through ``rpc_target`` (only the wire methods of
``wire-compat.md``: ``scan_repository``, ``scan_repository_async``, ``examine``,
``list_directory``, ``root``), never the lifecycle methods. ``list_directory`` and
``root`` work in the lab directory and the repository only.

User code is never compiled or imported in the master's process: examinations and the
check of submitted content (compiled, then examined as a file) run in the examiner
pool's processes, with a time and a memory limit (``labpipe.toml`` ``[examine]``).
``check_submission`` checks everything a submission says before a RID is taken: the
file or content, the class, and the arguments against the examined descriptions
(``argcheck.py``). ``labpipe.toml`` ``[security]`` limits raw
files (submitted without ``repo_rev``, or examined with ``use_repository=False``) to
the lab directory, the repository and ``file_folders`` unless ``allow_files_anywhere``,
and may refuse content (``allow_content = false``). ``examine`` calls are logged with
the caller's address.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from labpipe.config import LabConfig
from labpipe.master import argcheck
from labpipe.master.repository import hooks
from labpipe.master.supervision import TaskSet
from labpipe.protocol.rpc import current_peer
from labpipe.master.repository.backend import (EmptyRepositoryError, NO_REVISION, HookableBackend,
                                               RepositoryBackend, Revision)
from labpipe.master.repository.examiner import Examined, ExaminerPool
from labpipe.master.repository.paths import in_subdir, is_within, repo_path
from labpipe.master.repository.publish import sync_dict
from labpipe.master.repository.scan import CacheEntry, build_explist, cache_entry, plan
from labpipe.master.repository.submission import (SubmissionError, allowed_folders,
                                                  check_class, check_file_allowed,
                                                  resolve_submission)
from labpipe.protocol.sync import Notifier
from labpipe.protocol.tls import TLSFiles
from labpipe.worker.launcher import Launcher

__all__ = ["ExperimentDB", "ExperimentDBTarget", "ScanReport", "ExamineError", "caller"]

logger = logging.getLogger(__name__)


class ExamineError(Exception):
    """A file could not be examined; the message gives the file and the reason."""


@dataclass(frozen=True)
class ScanReport:
    """What one scan did."""

    rev: str
    files: int
    examined: tuple[str, ...]
    errors: int
    mods: int
    duration: float


class ExperimentDB:
    """Scans a repository backend and publishes its experiments; see the module docstring.

    ``lab_dir``: the master's lab directory (plain ``file`` submissions and
    ``list_directory`` are relative to it). ``experiment_subdir``: only files under it
    (relative to the repository root) are scanned. ``workers`` and ``examine_timeout``
    (seconds per file; default ``config.examine.timeout``) configure the examining
    processes. ``config``: the lab's ``labpipe.toml`` (``[security]``, ``[examine]``).
    ``launcher`` starts the examining processes. ``tasks``: where the scan loop runs,
    as a fatal task (the master's; by default a set of the database's own).
    """

    def __init__(self, lab_dir: str, backend: RepositoryBackend, experiment_subdir: str = "",
                 *, workers: int | None = None, examine_timeout: float | None = None,
                 device_keys: Callable[[], Iterable[str]] | None = None,
                 config: LabConfig | None = None, launcher: Launcher,
                 tasks: TaskSet | None = None):
        self.lab_dir = os.path.abspath(lab_dir)
        self.backend = backend
        subdir = (experiment_subdir or "").strip().strip("/")
        self.experiment_subdir = repo_path(subdir) if subdir not in ("", ".") else ""
        self.config = config or LabConfig()
        limits = self.config.examine
        self.pool = ExaminerPool(
            workers, limits.timeout if examine_timeout is None else examine_timeout,
            memory=limits.memory_mb << 20, content_memory=limits.content_memory_mb << 20,
            launcher=launcher)
        self._tasks = tasks or TaskSet("experiment database", logger)
        self._file_folders = allowed_folders(self.lab_dir, backend.root,
                                             self.config.security)
        #: A callable giving the device database's keys (choices of plan arguments).
        self.device_keys = device_keys
        self.explist = Notifier({})
        self.explist_status = Notifier({"scanning": False, "cur_rev": NO_REVISION})
        self.explist_errors = Notifier({})
        #: The revision of the last completed scan (what ``repo_rev=None`` means).
        self.cur_rev: str = NO_REVISION
        #: The last scan's report, None before the first scan.
        self.last_scan: ScanReport | None = None
        #: The rescan hook installed by ``start`` (None without Git or control port).
        self.hook: hooks.HookResult | None = None
        self.rpc_target = ExperimentDBTarget(self)
        self._held: Revision | None = None
        self._cache: dict[tuple[str, str], CacheEntry] = {}
        self._results: dict[str, Examined] = {}
        self._plain_files: dict[str, tuple[tuple, Examined]] = {}
        self._contents: dict[tuple[bytes, tuple[str, ...]], Examined] = {}
        self._waiters: list[asyncio.Future] = []
        self._next_rev: str | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._closed = False

    # -- lifetime ----------------------------------------------------------------------

    async def start(self, *, control_port: int | None = None,
                    control_host: str = "127.0.0.1",
                    control_tls: TLSFiles | None = None) -> None:
        """Start the examining processes, install the rescan hook, run the first scan.

        With a Git backend and ``control_port`` (the master's RPC port, already
        listening), a hook is installed so that a push (bare repository) or a commit
        (non-bare) rescans; see ``hooks.py``. It is installed before the first scan so
        that no push is missed in between. ``control_tls``: the client files the hook
        connects with when the control port is TLS.
        """
        if self._loop_task is not None:
            raise RuntimeError("the experiment database is already started")
        await self.pool.start()
        # scans are requested through it: without it the database is of no use
        self._loop_task = self._tasks.spawn(self._scan_loop(), "the repository scan loop",
                                            fatal=True)
        if control_port is not None:
            self.install_hook(control_port, control_host, control_tls)
        await self.scan_repository()

    def install_hook(self, control_port: int, control_host: str = "127.0.0.1",
                     control_tls: TLSFiles | None = None) -> None:
        """Install or refresh the rescan hook (Git backends only; see ``hooks.py``)."""
        if not isinstance(self.backend, HookableBackend):
            return
        folder, configured = self.backend.hooks_dir()
        command = hooks.notify_command(control_port, control_host, tls=control_tls)
        self.hook = hooks.install_hook(folder, self.backend.bare, command,
                                       configured_dir=configured)

    async def close(self) -> None:
        """Stop scanning and the examining processes; release the checkout of ``cur_rev``.

        The backend is not closed: checkouts held by runs belong to the scheduler.
        """
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            # a failure of the loop was logged (and reported) when it happened
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        await self.pool.close()
        if self._held is not None:
            held, self._held = self._held, None
            await asyncio.to_thread(self.backend.release_rev, held.commit)

    # -- scans -------------------------------------------------------------------------

    async def scan_repository(self, new_cur_rev: str | None = None) -> None:
        """Scan (``new_cur_rev``: a revision, None for HEAD) and wait until it is published."""
        waiter = asyncio.get_running_loop().create_future()
        await self._request_scan(new_cur_rev, waiter)
        await waiter

    async def scan_repository_async(self, new_cur_rev: str | None = None) -> None:
        """Request a scan and return at once (the scan runs in the database's scan task)."""
        await self._request_scan(new_cur_rev, None)

    async def _request_scan(self, rev: str | None, waiter: asyncio.Future | None) -> None:
        if self._closed:
            raise RuntimeError("the experiment database is closed")
        if rev is not None:
            rev = await asyncio.to_thread(self.backend.resolve, rev)
        self._next_rev = rev
        if waiter is not None:
            self._waiters.append(waiter)
        self._wake.set()

    async def _scan_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            rev, self._next_rev = self._next_rev, None
            try:
                report = await self._scan(rev)
            except asyncio.CancelledError:
                for waiter in waiters:
                    waiter.cancel()
                raise
            except Exception as exc:
                logger.error("experiment repository scan failed: %s", exc,
                             exc_info=not isinstance(exc, (LookupError, OSError)))
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(report)

    async def _scan(self, rev: str | None) -> ScanReport:
        started = time.perf_counter()
        self.explist_status["scanning"] = True
        self._follow_device_keys()
        try:
            try:
                if rev is None:
                    rev = await asyncio.to_thread(self.backend.resolve, None)
            except EmptyRepositoryError:
                rev = None
            new_hold = None
            if rev is not None and (self._held is None or self._held.commit != rev):
                new_hold = await asyncio.to_thread(self.backend.request_rev, rev)
            try:
                report = await self._scan_revision(rev, new_hold or self._held, started)
            except BaseException:
                if new_hold is not None:
                    await asyncio.to_thread(self.backend.release_rev, new_hold.commit)
                raise
            if rev is None or new_hold is not None:
                old, self._held = self._held, new_hold
                if old is not None:
                    await asyncio.to_thread(self.backend.release_rev, old.commit)
            return report
        finally:
            self.explist_status["scanning"] = False

    async def _scan_revision(self, rev: str | None, hold: Revision | None,
                             started: float) -> ScanReport:
        subdir = self.experiment_subdir
        if rev is None or hold is None:
            listing: dict[str, str] = {}
        else:
            listing = await asyncio.to_thread(self.backend.list_files, "", rev)
        candidates = {p: c for p, c in listing.items() if in_subdir(p, subdir)}
        if subdir and rev is not None and not candidates:
            logger.warning("no experiment file under the experiment subdirectory %r of "
                           "revision %s", subdir, rev)
        reused, todo = plan(candidates, listing, self._cache)
        if todo:
            assert hold is not None
            outcomes = await asyncio.gather(
                *(self.pool.examine(os.path.join(hold.workdir, p), hold.workdir) for p in todo))
        else:
            outcomes = []
        cache = {(p, candidates[p]): entry for p, entry in reused.items()}
        for path, examined in zip(todo, outcomes):
            cache[(path, candidates[path])] = cache_entry(examined, listing)
        results = {path: entry.examined for (path, _), entry in cache.items()}
        explist, errors = build_explist(results, subdir)
        self._cache, self._results = cache, results
        mods = sync_dict(self.explist, explist)
        mods += sync_dict(self.explist_errors, errors)
        self.cur_rev = rev or NO_REVISION
        if self.explist_status.raw_view["cur_rev"] != self.cur_rev:
            self.explist_status["cur_rev"] = self.cur_rev
            mods += 1
        report = ScanReport(self.cur_rev, len(candidates), tuple(todo), len(errors), mods,
                            time.perf_counter() - started)
        self.last_scan = report
        logger.info("scanned %d experiment file(s) of revision %s in %.0f ms: %d examined, "
                    "%d skipped with errors (see explist_errors)", report.files, report.rev,
                    report.duration * 1e3, len(report.examined), report.errors)
        return report

    # -- examine, list_directory, root ---------------------------------------------------

    async def examine(self, filename: str, use_repository: bool = True,
                      revision: str | None = None) -> dict:
        """Examine one file in a worker process: ``{class_name: description}``.

        With ``use_repository``, ``filename`` is relative to the repository root, at
        ``revision`` (None: ``cur_rev``); otherwise it is a path on the master, relative
        to the lab directory. ExamineError when the file cannot be imported.
        """
        logger.info("examine(%r, use_repository=%r, revision=%r) called by %s", filename,
                    use_repository, revision, caller())
        if not use_repository:
            path = self._lab_path(filename)
            check_file_allowed(path, self._file_folders, self.config.security, filename)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no file {filename!r} in the lab directory {self.lab_dir}")
            return self._described(filename, await self.pool.examine(path, os.path.dirname(path)))
        relative = repo_path(filename)
        if revision is None and self.cur_rev != NO_REVISION:
            revision = self.cur_rev
        hold = await asyncio.to_thread(self.backend.request_rev, revision)
        try:
            path = os.path.join(hold.workdir, relative)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no file {relative!r} in the repository at revision "
                                        f"{hold.commit[:12]}")
            examined = await self.pool.examine(path, hold.workdir)
        finally:
            await asyncio.to_thread(self.backend.release_rev, hold.commit)
        return self._described(relative, examined)

    @staticmethod
    def _described(filename: str, examined: Examined) -> dict:
        if not examined.ok:
            raise ExamineError(f"{filename}: {examined.error}")
        return examined.description or {}

    def _lab_path(self, name: str) -> str:
        return os.path.normpath(name if os.path.isabs(name) else os.path.join(self.lab_dir, name))

    def list_directory(self, directory: str) -> list[str]:
        """Entry names of a folder in the lab directory or the repository; folders end in "/".

        A relative ``directory`` is relative to the lab directory ("" is the lab
        directory itself). Anything else is refused with PermissionError.
        """
        path = self._lab_path(directory or ".")
        allowed = (self.lab_dir, self.backend.root)
        if not any(is_within(path, folder) for folder in allowed):
            raise PermissionError(
                f"list_directory: {directory!r} is outside the lab directory {self.lab_dir} "
                f"and the repository {self.backend.root}")
        entries = []
        with os.scandir(path) as it:
            for entry in it:
                entries.append(entry.name + "/" if entry.is_dir() else entry.name)
        return sorted(entries)

    def root(self) -> str:
        """The lab directory (absolute): where plain file paths and list_directory start."""
        return self.lab_dir

    # -- submissions -------------------------------------------------------------------

    async def check_submission(self, expid: dict, check_arguments: bool = True) -> dict:
        """Check an expid before it is accepted; returns it resolved.

        Resolves ``repo_rev`` to a full commit id, checks that the file exists (and, for
        ``content``, that it compiles), then that the class exists (exactly one
        experiment when ``class_name`` is None): from the last scan when the file is
        part of it, otherwise by examining the file (or the content) in a worker
        process; then, with check_arguments, the arguments against the examined
        descriptions of that file at that revision (``argcheck.py``: names, values,
        scans, devices; a black-box script takes none). Raises ``SubmissionError`` (a
        ValueError) with a one-line message.
        """
        args = (expid, self.backend, self.lab_dir, self.cur_rev)
        if isinstance(expid, dict) and "repo_rev" in expid and not self.backend.instant:
            # the backend's checks (a Git lookup may wait for a checkout): off the loop
            resolved, source = await asyncio.to_thread(resolve_submission, *args)
        else:  # a stat: cheaper than a hop to a thread
            resolved, source = resolve_submission(*args)
        class_name = resolved.get("class_name")
        shown = resolved.get("file") or "the submitted content"
        if source.kind == "content":
            if not self.config.security.allow_content:
                raise SubmissionError("submission by content is turned off in this lab "
                                      "(labpipe.toml [security] allow_content = false)")
            examined = await self._examine_content(resolved["content"])
            shown = "the submitted content"
        elif source.kind == "file":
            assert source.path is not None
            check_file_allowed(source.path, self._file_folders, self.config.security,
                               resolved["file"])
            examined = await self._examine_plain_file(source.path)
        elif source.rev == self.cur_rev and source.path in self._results:
            examined = self._results[source.path]
        else:
            hold = await asyncio.to_thread(self.backend.request_rev, source.rev)
            try:
                examined = await self.pool.examine(
                    os.path.join(hold.workdir, source.path or ""), hold.workdir)
            finally:
                await asyncio.to_thread(self.backend.release_rev, hold.commit)
        submitted = resolved.get("arguments") or {}
        if class_name is None and examined.ok and examined.script:
            if check_arguments and submitted:
                raise SubmissionError(
                    f"{shown} is a plain script, which takes no arguments (given: "
                    f"{', '.join(map(str, submitted))})")
            return resolved  # runs as one black-box run (worker/script.py)
        check_class(examined, class_name, shown)
        if check_arguments:
            classes = examined.description or {}  # check_class saw at least one
            name = class_name or next(iter(classes))
            try:
                argcheck.check_arguments(classes[name]["arginfo"], submitted,
                                         self._device_key_set(), experiment=name)
            except argcheck.ArgumentRefused as exc:
                raise SubmissionError(f"{shown}: {exc}") from None
        return resolved

    async def _examine_content(self, content: str) -> Examined:
        """Compile submitted content (its memory limit), then examine it (the
        examination's), in examining processes; the last examinations are reused for
        the same text, while the device keys are the same."""
        key = (hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest(),
               self.pool.device_keys)
        cached = self._contents.get(key)
        if cached is not None:
            return cached
        checked = await self.pool.check_content(content)
        if not checked.ok:
            raise SubmissionError(checked.error)
        examined = await self.pool.examine_content(content)
        if examined.ok:  # a failure may be the examiner's (a time limit under load)
            if len(self._contents) >= 100:
                self._contents.clear()
            self._contents[key] = examined
        return examined

    def _device_key_set(self) -> frozenset[str] | None:
        """The device database's keys now (None when unknown: devices go unchecked)."""
        if self.device_keys is None:
            return None
        try:
            return frozenset(self.device_keys())
        except Exception:
            logger.exception("cannot read the device keys to check a submission")
            return None

    def _follow_device_keys(self) -> None:
        """Give examinations the current device keys; when they changed, examine every
        file again (descriptions may offer them as choices)."""
        if self.device_keys is None:
            return
        try:
            keys = tuple(sorted(self.device_keys()))
        except Exception:
            logger.exception("cannot read the device keys for examination")
            return
        if keys != self.pool.device_keys:
            self.pool.device_keys = keys
            self._cache.clear()

    async def _examine_plain_file(self, path: str) -> Examined:
        """Examine a file on the master's filesystem, reusing the last examination
        while the file is unchanged (same inode, size and modification time), so that
        submitting the same file again and again costs no worker round trip."""
        st = os.stat(path)  # microseconds: cheaper than a hop to a thread
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._plain_files.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        examined = await self.pool.examine(path, os.path.dirname(path))
        if len(self._plain_files) >= 1000:
            self._plain_files.clear()
        self._plain_files[path] = (key, examined)
        return examined


def caller() -> str:
    """The address of the RPC client whose call is running, for the log."""
    peer = current_peer.get()
    if peer is None:
        return "the master itself"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class ExperimentDBTarget:
    """The ``experiment_db`` RPC target: the wire methods of ``ExperimentDB``, nothing else."""

    def __init__(self, db: ExperimentDB):
        self._db = db

    async def scan_repository(self, new_cur_rev: str | None = None) -> None:
        """Scan the repository (at ``new_cur_rev``, None for HEAD) and wait for the result."""
        await self._db.scan_repository(new_cur_rev)

    async def scan_repository_async(self, new_cur_rev: str | None = None) -> None:
        """Request a scan of the repository and return at once."""
        await self._db.scan_repository_async(new_cur_rev)

    async def examine(self, filename: str, use_repository: bool = True,
                      revision: str | None = None) -> dict:
        """``{class_name: {"name", "arginfo", "argument_ui", "scheduler_defaults"}}`` of a file."""
        return await self._db.examine(filename, use_repository, revision)

    def list_directory(self, directory: str) -> list[str]:
        """Names in a folder of the lab directory or the repository; folders end in "/"."""
        return self._db.list_directory(directory)

    def root(self) -> str:
        """The master's lab directory."""
        return self._db.root()
