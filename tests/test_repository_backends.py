"""Repository backends: filesystem listing and content ids, Git (dulwich) revisions and
checkouts, against repositories made with the real ``git`` command line."""

import os
import re
import subprocess
import textwrap
import time

import pytest

from labpipe.master.repository.backend import EmptyRepositoryError, RepositoryBackend
from labpipe.master.repository.filesystem import FilesystemBackend, blob_id
from labpipe.master.repository.git import GitBackend

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Lab", "GIT_AUTHOR_EMAIL": "lab@example.org",
           "GIT_COMMITTER_NAME": "Lab", "GIT_COMMITTER_EMAIL": "lab@example.org",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd, *args):
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


def write(root, relpath, text):
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def commit_all(worktree, message):
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", message)
    return git(worktree, "rev-parse", "HEAD")


def age(root, seconds=3600):
    """Make every file look last modified ``seconds`` ago (past the racy margin)."""
    then = time.time() - seconds
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (then, then))


# -- filesystem ----------------------------------------------------------------------


def test_filesystem_lists_python_files_without_hidden_ones(tmp_path):
    root = str(tmp_path)
    for rel in ["a.py", "sub/b.py", "sub/deeper/c.py", "notes.txt", ".hidden.py",
                ".secret/d.py", "sub/.cache/e.py"]:
        write(root, rel, f"# {rel}\n")
    backend = FilesystemBackend(root)
    assert isinstance(backend, RepositoryBackend)
    listing = backend.list_files()
    assert sorted(listing) == ["a.py", "sub/b.py", "sub/deeper/c.py"]
    assert sorted(backend.list_files("sub")) == ["sub/b.py", "sub/deeper/c.py"]
    assert backend.list_files("missing") == {}
    # content ids are Git blob ids: the real git agrees
    assert listing["sub/b.py"] == git(root, "hash-object", "sub/b.py")
    assert backend.get_cur_rev() == "N/A"
    assert backend.request_rev(None) == (backend.root, "N/A", "")


def test_filesystem_does_not_reread_unchanged_files(tmp_path):
    root = str(tmp_path)
    for i in range(20):
        write(root, f"e{i}.py", f"x = {i}\n")
    age(root)
    backend = FilesystemBackend(root)
    first = backend.list_files()
    assert backend.hashed == 20
    assert backend.list_files() == first
    assert backend.hashed == 20  # nothing re-read
    write(root, "e3.py", "x = 'changed'\n")
    second = backend.list_files()
    assert backend.hashed == 21  # only the changed file
    assert second["e3.py"] != first["e3.py"]
    assert {k: v for k, v in second.items() if k != "e3.py"} == \
        {k: v for k, v in first.items() if k != "e3.py"}
    os.remove(os.path.join(root, "e4.py"))
    assert "e4.py" not in backend.list_files()


def test_filesystem_same_size_rewrite_within_one_clock_tick_is_seen(tmp_path):
    # A rewrite that keeps size, inode and even mtime must still change the id while
    # the file is "racy" (modified less than racy_margin before it was read).
    root = str(tmp_path)
    path = write(root, "e.py", "x = 1\n")
    backend = FilesystemBackend(root)
    before = backend.list_files()["e.py"]
    st = os.stat(path)
    with open(path, "r+") as f:
        f.write("x = 2\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert backend.list_files()["e.py"] == blob_id(b"x = 2\n") != before


def test_filesystem_has_no_revisions(tmp_path):
    backend = FilesystemBackend(str(tmp_path))
    assert backend.resolve(None) == backend.resolve("N/A") == "N/A"
    with pytest.raises(LookupError, match="'main'.*-g"):
        backend.resolve("main")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FilesystemBackend(str(tmp_path / "nope"))


# -- git -----------------------------------------------------------------------------


@pytest.fixture
def pushed(tmp_path):
    """A bare repository with two commits pushed from a clone; returns (bare, clone, c1, c2)."""
    bare = str(tmp_path / "repo.git")
    clone = str(tmp_path / "clone")
    git(tmp_path, "init", "-q", "--bare", bare)
    git(tmp_path, "clone", "-q", bare, clone)
    write(clone, "exp.py", "VERSION = 1\n")
    write(clone, "lib/helper.py", "H = 1\n")
    write(clone, ".ci/skip.py", "hidden\n")
    write(clone, "README", "not python\n")
    c1 = commit_all(clone, "first version")
    git(clone, "tag", "v1")
    git(clone, "tag", "-a", "v1-annotated", "-m", "annotated tag")
    write(clone, "exp.py", "VERSION = 2\n")
    c2 = commit_all(clone, "second version\n\nwith a body")
    git(clone, "push", "-q", "--tags", "origin", "main")
    return bare, clone, c1, c2


def test_git_resolves_commits_branches_tags_and_short_ids(pushed):
    bare, _, c1, c2 = pushed
    backend = GitBackend(bare)
    assert isinstance(backend, RepositoryBackend)
    assert backend.bare
    assert backend.get_cur_rev() == c2
    assert backend.resolve(None) == c2
    assert backend.resolve("main") == c2
    assert backend.resolve("HEAD") == c2
    assert backend.resolve("refs/heads/main") == c2
    assert backend.resolve("v1") == c1
    assert backend.resolve("v1-annotated") == c1  # peeled to its commit
    assert backend.resolve(c1) == c1
    assert backend.resolve(c1[:7]) == c1
    # git's ancestry suffixes, as ARTIQ's master (pygit2) takes them
    for spelling in ["HEAD~1", "main^", "main^1", "HEAD~", "HEAD^^0", f"{c2[:7]}~1",
                     "v1~0", "v1-annotated^0"]:
        assert backend.resolve(spelling) == c1, spelling
    for bad in ["nope", "deadbeef", "0" * 40, "HEAD~2", "HEAD^2", "v1^", "nope~1"]:
        with pytest.raises(LookupError, match=re.escape(repr(bad))):
            backend.resolve(bad)
    assert backend.get_message(c2) == "second version\n\nwith a body"
    backend.close()


def test_git_lists_committed_python_files_with_blob_ids(pushed):
    bare, clone, c1, c2 = pushed
    backend = GitBackend(bare)
    listing = backend.list_files()
    assert sorted(listing) == ["exp.py", "lib/helper.py"]
    assert listing["exp.py"] == git(clone, "rev-parse", "HEAD:exp.py")
    assert backend.list_files(rev=c1)["exp.py"] == git(clone, "rev-parse", f"{c1}:exp.py")
    assert backend.list_files("lib") == {"lib/helper.py": listing["lib/helper.py"]}
    assert backend.list_files("nothing") == {}
    assert backend.exists("lib/helper.py", c2)
    assert not backend.exists("lib", c2) and not backend.exists("nope.py", c2)
    with pytest.raises(ValueError, match="outside"):
        backend.exists("../x.py", c2)
    # the same content has the same id on the filesystem
    assert FilesystemBackend(clone).list_files()["exp.py"] == listing["exp.py"]
    backend.close()


def test_git_non_bare_reads_committed_content_only(tmp_path):
    work = str(tmp_path / "work")
    git(tmp_path, "init", "-q", work)
    write(work, "exp.py", "VERSION = 'committed'\n")
    commit = commit_all(work, "committed")
    write(work, "exp.py", "VERSION = 'draft'\n")     # modified, not committed
    write(work, "draft.py", "VERSION = 'untracked'\n")
    git(work, "add", "draft.py")                      # staged, not committed
    backend = GitBackend(work)
    assert not backend.bare
    assert backend.get_cur_rev() == commit
    assert sorted(backend.list_files()) == ["exp.py"]
    revision = backend.request_rev(None)
    with open(os.path.join(revision.workdir, "exp.py")) as f:
        assert f.read() == "VERSION = 'committed'\n"
    assert not os.path.exists(os.path.join(revision.workdir, "draft.py"))
    assert backend.hooks_dir() == (os.path.join(work, ".git", "hooks"), False)
    backend.close()


def test_git_empty_repository(tmp_path):
    bare = str(tmp_path / "empty.git")
    git(tmp_path, "init", "-q", "--bare", bare)
    backend = GitBackend(bare)
    assert backend.get_cur_rev() == "N/A"
    assert backend.list_files() == {}
    with pytest.raises(EmptyRepositoryError, match="no commit yet"):
        backend.resolve(None)
    backend.close()


def test_git_head_naming_a_branch_nobody_pushed_is_explained(tmp_path):
    bare = str(tmp_path / "repo.git")
    clone = str(tmp_path / "clone")
    git(tmp_path, "-c", "init.defaultBranch=master", "init", "-q", "--bare", bare)
    git(tmp_path, "clone", "-q", bare, clone)
    write(clone, "exp.py", "X = 1\n")
    commit_all(clone, "first")
    git(clone, "push", "-q", "origin", "HEAD:refs/heads/main")
    backend = GitBackend(bare)
    with pytest.raises(LookupError, match="names refs/heads/master, which has no commit.*"
                       "git symbolic-ref HEAD refs/heads/main") as info:
        backend.resolve(None)
    assert not isinstance(info.value, EmptyRepositoryError)
    git(bare, "symbolic-ref", "HEAD", "refs/heads/main")
    assert backend.resolve(None) == git(clone, "rev-parse", "HEAD")
    backend.close()


def test_git_not_a_repository(tmp_path):
    with pytest.raises(Exception, match="not a Git repository.*git init --bare"):
        GitBackend(str(tmp_path))


def test_git_checkouts_of_two_revisions_at_once_are_refcounted(pushed):
    bare, _, c1, c2 = pushed
    backend = GitBackend(bare)
    old = backend.request_rev("v1")
    new = backend.request_rev("main")
    assert (old.commit, new.commit) == (c1, c2)
    assert old.message == "first version"
    assert old.workdir != new.workdir
    for revision, version in [(old, 1), (new, 2)]:
        with open(os.path.join(revision.workdir, "exp.py")) as f:
            assert f.read() == f"VERSION = {version}\n"
        with open(os.path.join(revision.workdir, "lib", "helper.py")) as f:
            assert f.read() == "H = 1\n"
    # files are read-only; an unchanged file is the previous checkout's, linked
    old_helper = os.stat(os.path.join(old.workdir, "lib", "helper.py"))
    new_helper = os.stat(os.path.join(new.workdir, "lib", "helper.py"))
    assert old_helper.st_mode & 0o222 == 0 and old_helper.st_mode & 0o444 == 0o444
    assert new_helper.st_ino == old_helper.st_ino
    assert os.stat(os.path.join(new.workdir, "exp.py")).st_ino != \
        os.stat(os.path.join(old.workdir, "exp.py")).st_ino
    again = backend.request_rev(c1[:8])          # same commit: same folder, one more hold
    assert again.workdir == old.workdir
    assert backend.holds()[c1] == (old.workdir, 2)
    backend.release_rev(c1)
    assert os.path.isdir(old.workdir)            # still held once
    backend.release_rev(c1)
    assert not os.path.exists(old.workdir)       # last hold gone: folder removed
    assert c1 not in backend.holds()
    with pytest.raises(LookupError, match="not checked out"):
        backend.release_rev(c1)
    assert os.path.isdir(new.workdir)            # the other revision is untouched
    with open(os.path.join(new.workdir, "lib", "helper.py")) as f:
        assert f.read() == "H = 1\n"
    backend.close()
    assert not os.path.exists(new.workdir)       # close removes every checkout


def test_git_sees_pushes_made_after_it_was_opened(pushed):
    bare, clone, _, c2 = pushed
    backend = GitBackend(bare)
    assert sorted(backend.list_files()) == ["exp.py", "lib/helper.py"]
    write(clone, "new.py", "N = 1\n")
    c3 = commit_all(clone, "third")
    git(clone, "push", "-q", "origin", "main")
    assert backend.get_cur_rev() == c3 != c2
    assert "new.py" in backend.list_files()
    git(bare, "gc", "-q")                        # repacked behind dulwich's back
    assert backend.resolve(c2[:10]) == c2
    assert "new.py" in backend.list_files(rev=c3)
    backend.close()
