"""The Git backend: experiments are the committed files of a Git repository (dulwich).

Only committed content is read: the current revision is the commit HEAD points to
(in a bare repository, the last commit pushed to the current branch), never the working
copy of a non-bare repository. Revisions given by users are resolved with dulwich's
rules: a full commit id, a ref (``HEAD``, a branch, a tag, annotated tags peeled to
their commit, ``refs/...``, a remote branch), or a unique hex prefix of at least 4
digits, each optionally followed by git's ancestry suffixes ``~N`` and ``^N``
(``HEAD~1``, ``v1^2``), which ARTIQ's master (pygit2) also takes. Anything else is a
``LookupError`` naming the revision.

Checkouts: ``request_rev(rev)`` writes the commit's tree into a temporary folder, one
per commit id, shared and reference-counted; ``release_rev(commit)`` removes the folder
when its count drops to zero, and ``close()`` removes all of them. Symbolic links are
written as links, submodules as empty folders. Files are read-only (mode 0444, or 0555
when executable): a checkout is the code of a commit, not a place to edit. A file whose
blob and mode are the same in the newest checkout still held is a hard link to it
rather than a copy: it has the same bytes, and creating a file costs some 20 times more
than a link on ext4, which keeps a checkout after a one-file commit to a few ms.

Content ids are the blob ids of the commit's tree, so listing a commit reads trees
only, never file contents; listings are cached per commit (commits never change).
Every method takes one lock: dulwich's pack readers are not thread-safe.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

from dulwich.errors import NotGitRepository, NotTreeError
from dulwich.object_store import iter_tree_contents, tree_lookup_path
from dulwich.objects import S_ISGITLINK, Commit, ObjectID
from dulwich.objectspec import AmbiguousShortId, parse_commit
from dulwich.repo import Repo

from labpipe.master.repository.backend import EmptyRepositoryError, NO_REVISION, Revision
from labpipe.master.repository.paths import is_hidden, repo_path

if TYPE_CHECKING:
    from dulwich.refs import Ref  # a NewType of bytes (recent dulwich only)

__all__ = ["GitBackend"]

logger = logging.getLogger(__name__)

_LISTINGS_KEPT = 8


class _Checkout:
    __slots__ = ("workdir", "message", "holds", "files")

    def __init__(self, workdir: str, message: str, files: dict[bytes, tuple[bytes, int]]):
        self.workdir = workdir
        self.message = message
        self.holds = 1
        self.files = files  # tree path -> (blob id, mode) of the regular files written


_ANCESTRY = re.compile(r"(?P<base>[^~^]+)(?P<suffixes>(?:[~^][0-9]{0,6})+)")


def _commit(repo: Repo, sha: bytes, rev: str) -> Commit:
    """The commit object ``sha`` (a parent of a commit ``rev`` walks through)."""
    obj = repo[sha]
    if not isinstance(obj, Commit):
        raise KeyError(rev)
    return obj


def _parse_revision(repo: Repo, rev: str) -> Commit:
    """The commit ``rev`` names: dulwich's ``parse_commit``, then git's ``~N`` (N-th
    first-parent ancestor) and ``^N`` (N-th parent; ``^0`` the commit itself) suffixes;
    KeyError when there is no such commit."""
    match = _ANCESTRY.fullmatch(rev)
    if match is None:
        return parse_commit(repo, rev)
    commit = parse_commit(repo, match["base"])
    for operator, digits in re.findall(r"([~^])([0-9]*)", match["suffixes"]):
        count = int(digits) if digits else 1
        if operator == "^":
            if count == 0:
                continue
            if count > len(commit.parents):
                raise KeyError(rev)
            commit = _commit(repo, commit.parents[count - 1], rev)
            continue
        for _ in range(count):
            if not commit.parents:
                raise KeyError(rev)
            commit = _commit(repo, commit.parents[0], rev)
    return commit


class GitBackend:
    """Committed experiments of the Git repository at ``path`` (bare or not)."""

    instant = False  # object reads and checkouts: in a thread

    def __init__(self, path: str):
        self.root = os.path.abspath(path)
        try:
            self._repo = Repo(self.root)
        except NotGitRepository:
            raise NotGitRepository(
                f"{self.root} is not a Git repository: create it with "
                f"`git init --bare {path}`, or start the master without -g") from None
        self.bare: bool = self._repo.bare
        self._lock = threading.RLock()
        self._checkouts: dict[str, _Checkout] = {}
        self._checkout_base: str | None = None
        self._listings: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()

    # -- revisions ---------------------------------------------------------------------

    def get_cur_rev(self) -> str:
        """The commit id HEAD points to, or ``"N/A"`` while HEAD has no commit."""
        try:
            return self.resolve(None)
        except LookupError:
            return NO_REVISION

    def resolve(self, rev: str | None) -> str:
        """The full commit id for ``rev`` (None: HEAD); LookupError naming ``rev`` if unknown."""
        with self._lock:
            if rev is None:
                try:
                    return self._repo.head().decode("ascii")
                except KeyError:
                    self._unborn_head()
            if not isinstance(rev, str) or not rev.strip():
                raise LookupError(f"invalid revision {rev!r}: give a commit id, "
                                  "a branch or a tag")
            try:
                commit = _parse_revision(self._repo, rev.strip())
            except AmbiguousShortId:
                raise LookupError(f"revision {rev!r} is ambiguous in the Git repository "
                                  f"{self.root}: give more hex digits") from None
            except (KeyError, ValueError, AssertionError):
                raise LookupError(f"unknown revision {rev!r} in the Git repository "
                                  f"{self.root}: give a commit id, a branch or a tag") from None
            return commit.id.decode("ascii")

    def _unborn_head(self) -> None:
        """Raise the error for a HEAD without commit: empty repository, or wrong branch."""
        chain, _ = self._repo.refs.follow(cast("Ref", b"HEAD"))
        head = chain[-1].decode("utf-8", "replace") if chain else "HEAD"
        branches = sorted(b.decode("utf-8", "replace")
                          for b in self._repo.refs.keys(base=cast("Ref", b"refs/heads/")))
        if not branches:
            raise EmptyRepositoryError(
                f"the Git repository {self.root} has no commit yet: "
                "commit and push an experiment first")
        raise LookupError(
            f"HEAD of the Git repository {self.root} names {head}, which has no commit, "
            f"while branches {', '.join(branches)} have some: run `git symbolic-ref HEAD "
            f"refs/heads/{branches[0]}` in it, or push to {head.rsplit('/', 1)[-1]}")

    def get_message(self, rev: str) -> str:
        """The message of commit ``rev``, stripped."""
        with self._lock:
            return self._commit(rev).message.decode("utf-8", "replace").strip()

    def exists(self, path: str, rev: str) -> bool:
        """Whether ``path`` (relative to the root) is a file in commit ``rev``."""
        path = repo_path(path)
        with self._lock:
            commit = self._commit(rev)
            try:
                mode, _ = tree_lookup_path(self._repo.object_store.__getitem__,
                                           commit.tree, path.encode())
            except (KeyError, NotTreeError):
                return False
            return stat.S_ISREG(mode)

    # -- listings ----------------------------------------------------------------------

    def list_files(self, subdir: str = "", rev: str | None = None) -> dict[str, str]:
        """``{path: blob id}`` of the ``.py`` files under ``subdir`` in commit ``rev``.

        ``rev`` None means HEAD. Hidden files and folders, symbolic links and
        submodules are skipped. An empty repository or a missing ``subdir`` lists nothing.
        """
        top = "" if subdir in ("", ".") else repo_path(subdir)
        with self._lock:
            if rev is None:
                try:
                    rev = self.resolve(None)
                except EmptyRepositoryError:
                    return {}
            commit = self._commit(rev)
            key = (commit.id.decode("ascii"), top)
            cached = self._listings.get(key)
            if cached is not None:
                self._listings.move_to_end(key)
                return dict(cached)
            listing = self._list_tree(commit, top)
            self._listings[key] = listing
            while len(self._listings) > _LISTINGS_KEPT:
                self._listings.popitem(last=False)
            return dict(listing)

    def _list_tree(self, commit: Commit, top: str) -> dict[str, str]:
        store = self._repo.object_store
        tree_id = commit.tree
        if top:
            try:
                mode, tree_id = tree_lookup_path(store.__getitem__, commit.tree, top.encode())
            except (KeyError, NotTreeError):
                return {}
            if not stat.S_ISDIR(mode):
                return {}
        prefix = top + "/" if top else ""
        listing = {}
        for entry in iter_tree_contents(store, tree_id):
            path = prefix + os.fsdecode(entry.path)
            if (stat.S_ISREG(entry.mode) and path.endswith(".py")
                    and not is_hidden(path)):
                listing[path] = entry.sha.decode("ascii")
        return listing

    # -- checkouts ---------------------------------------------------------------------

    def request_rev(self, rev: str | None) -> Revision:
        """Check out ``rev`` (None: HEAD) into its folder, or share the existing one."""
        with self._lock:
            commit_id = self.resolve(rev)
            checkout = self._checkouts.get(commit_id)
            if checkout is not None:
                checkout.holds += 1
            else:
                checkout = self._check_out(commit_id)
                self._checkouts[commit_id] = checkout
            return Revision(checkout.workdir, commit_id, checkout.message)

    def release_rev(self, rev: str) -> None:
        """Drop one hold on commit ``rev``; the folder goes with the last one.

        Raises LookupError when ``rev`` is not held (released more often than requested).
        """
        with self._lock:
            checkout = self._checkouts.get(rev)
            if checkout is None:
                raise LookupError(f"revision {rev!r} is not checked out: "
                                  "released more often than requested?")
            checkout.holds -= 1
            if checkout.holds == 0:
                del self._checkouts[rev]
                shutil.rmtree(checkout.workdir, ignore_errors=True)
                logger.debug("removed the checkout of %s", rev)

    def holds(self) -> dict[str, tuple[str, int]]:
        """``{commit id: (workdir, number of holds)}`` of the current checkouts."""
        with self._lock:
            return {c: (co.workdir, co.holds) for c, co in self._checkouts.items()}

    def _check_out(self, commit_id: str) -> _Checkout:
        commit = self._commit(commit_id)
        if self._checkout_base is None:
            self._checkout_base = tempfile.mkdtemp(prefix="labpipe-checkouts-")
        workdir = tempfile.mkdtemp(prefix=commit_id[:12] + "-", dir=self._checkout_base)
        # the newest checkout is most likely the parent commit: link what did not change
        donor = next(reversed(self._checkouts.values()), None)
        try:
            files = self._write_tree(commit.tree, workdir, donor)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        logger.debug("checked out %s into %s", commit_id, workdir)
        return _Checkout(workdir, commit.message.decode("utf-8", "replace").strip(), files)

    def _write_tree(self, tree_id: ObjectID, workdir: str,
                    donor: _Checkout | None) -> dict[bytes, tuple[bytes, int]]:
        store = self._repo.object_store
        made = {workdir}
        files: dict[bytes, tuple[bytes, int]] = {}
        for entry in iter_tree_contents(store, tree_id):
            relative = repo_path(os.fsdecode(entry.path))  # refuses ../ in hostile trees
            target = os.path.join(workdir, relative)
            folder = os.path.dirname(target)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            if S_ISGITLINK(entry.mode):
                os.makedirs(target, exist_ok=True)
                continue
            if stat.S_ISLNK(entry.mode):
                os.symlink(os.fsdecode(store[entry.sha].as_raw_string()), target)
                continue
            files[entry.path] = (entry.sha, entry.mode)
            if donor is not None and donor.files.get(entry.path) == (entry.sha, entry.mode):
                try:
                    os.link(os.path.join(donor.workdir, relative), target)
                    continue
                except OSError:
                    pass  # another filesystem, a link limit: write the file instead
            _write_read_only(target, store[entry.sha].as_raw_string(), entry.mode & 0o111)
        return files

    # -- hooks support and lifetime ----------------------------------------------------

    def hooks_dir(self) -> tuple[str, bool]:
        """``(folder where Git looks for hooks, whether core.hooksPath chose it)``."""
        with self._lock:
            control = self._repo.controldir()
            try:
                configured = self._repo.get_config().get((b"core",), b"hooksPath")
            except KeyError:
                configured = None
            if configured:
                path = os.path.expanduser(os.fsdecode(configured))
                base = self.root if self.bare else os.path.dirname(control)
                return os.path.join(base, path), True
            return os.path.join(control, "hooks"), False

    def close(self) -> None:
        """Remove every checkout folder and close the repository."""
        with self._lock:
            if self._checkouts:
                logger.debug("closing with %d checkout(s) still held", len(self._checkouts))
            self._checkouts.clear()
            if self._checkout_base is not None:
                shutil.rmtree(self._checkout_base, ignore_errors=True)
                self._checkout_base = None
            self._listings.clear()
            self._repo.close()

    def _commit(self, rev: str) -> Commit:
        try:
            obj = self._repo[rev.encode("ascii")]
        except (KeyError, UnicodeEncodeError, AssertionError, ValueError):
            raise LookupError(f"unknown commit {rev!r} in the Git repository {self.root}") from None
        if not isinstance(obj, Commit):
            raise LookupError(f"{rev!r} is not a commit in the Git repository {self.root}")
        return obj


def _write_read_only(path: str, data: bytes, executable: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o555 if executable else 0o444)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
