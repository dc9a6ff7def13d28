"""git push (or commit) rescans the master's experiment list through the hook it installs.

Real ``git`` command lines push to a bare repository while an ExperimentDB is served by
a real RPC server on 127.0.0.1 (port 0); the hook runs ``labpipe.master.repository.notify``
with this Python. Tests wait on notifier mods with a timeout, never a fixed sleep.
"""

import asyncio
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from labpipe.master.repository import hooks
from labpipe.master.repository.db import ExperimentDB
from labpipe.master.repository.git import GitBackend
from labpipe.protocol.rpc import Server
from conftest import session_launcher, write_file as write
from test_repository_scan import Watch

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Lab", "GIT_AUTHOR_EMAIL": "lab@example.org",
           "GIT_COMMITTER_NAME": "Lab", "GIT_COMMITTER_EMAIL": "lab@example.org",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd, *args):
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          env=GIT_ENV, check=True, capture_output=True, text=True)


def experiment(cls, title, default=1):
    return textwrap.dedent(f'''\
        from labpipe.experiment import *
        import helper

        class {cls}(EnvExperiment):
            """{title}"""
            def build(self):
                self.setattr_argument("x", NumberValue({default} + helper.OFFSET))

            def run(self):
                pass
        ''')


class Master:
    """An ExperimentDB on a Git repository behind a real RPC server."""

    def __init__(self, lab_dir, repo):
        self.backend = GitBackend(repo)
        self.db = ExperimentDB(lab_dir, self.backend, examine_timeout=5.0,
                               launcher=session_launcher)
        self.server = Server({"experiment_db": self.db.rpc_target})
        self.watch = Watch(explist=self.db.explist, status=self.db.explist_status)

    async def __aenter__(self):
        await self.server.start("127.0.0.1", 0)
        await self.db.start(control_port=self.server.port, control_host="127.0.0.1")
        return self

    async def __aexit__(self, *exc_info):
        await self.db.close()
        await self.server.stop()
        self.backend.close()

    def default(self, name):
        return self.db.explist.raw_view[name]["arginfo"]["x"][0]["default"]


async def push(clone, message):
    """Commit everything in the clone and push it; returns (commit id, git's output)."""
    def do():
        git(clone, "add", "-A")
        git(clone, "commit", "-q", "-m", message)
        out = git(clone, "push", "origin", "HEAD:main")
        return git(clone, "rev-parse", "HEAD").stdout.strip(), out.stdout + out.stderr
    return await asyncio.to_thread(do)


@pytest.fixture
def bare(tmp_path):
    path = str(tmp_path / "repository")
    git(tmp_path, "init", "-q", "--bare", path)
    return path


async def test_push_to_a_bare_repository_rescans_through_the_installed_hook(tmp_path, bare):
    clone = str(tmp_path / "clone")

    async def main():
        async with Master(str(tmp_path), bare) as m:
            db = m.db
            assert m.db.hook.status is hooks.HookStatus.INSTALLED
            hook = os.path.join(bare, "hooks", "post-receive")
            assert m.db.hook.path == hook and os.access(hook, os.X_OK)
            with open(hook) as f:
                text = f.read()
            assert hooks.MARKER in text and f"--port {m.server.port}" in text
            assert sys.executable in text
            # an empty repository: nothing yet
            assert db.explist.raw_view == {}
            assert db.explist_status.raw_view == {"scanning": False, "cur_rev": "N/A"}

            await asyncio.to_thread(git, tmp_path, "clone", "-q", bare, clone)
            write(clone, "helper.py", "OFFSET = 0\n")
            for i in range(5):
                write(clone, f"exp{i}.py", experiment(f"Exp{i}", f"Experiment {i}", i))
            first, output = await push(clone, "five experiments")
            assert "is rescanning its experiments" in output   # the hook's one line
            await m.watch.until(lambda: db.explist_status.raw_view["cur_rev"] == first)
            assert sorted(db.explist.raw_view) == [f"Experiment {i}" for i in range(5)]
            assert db.explist_errors.raw_view == {}
            examined = db.pool.examined
            assert examined == 6

            write(clone, "exp2.py", experiment("Exp2", "Experiment 2", 20))
            second, _ = await push(clone, "change one experiment")
            await m.watch.until(lambda: db.explist_status.raw_view["cur_rev"] == second)
            assert m.default("Experiment 2") == 20
            assert db.pool.examined == examined + 1             # only the changed file
            assert db.last_scan.examined == ("exp2.py",)

            # the previous revision is still reachable: examine and submit from it
            old = await m.db.rpc_target.examine("exp2.py", True, first[:10])
            assert old["Exp2"]["arginfo"]["x"][0]["default"] == 2
            expid = {"file": "exp2.py", "class_name": "Exp2", "arguments": {},
                     "repo_rev": first[:8]}
            resolved = await db.check_submission(expid)
            assert resolved["repo_rev"] == first
            assert m.backend.get_message(first) == "five experiments"
            resolved = await db.check_submission(dict(expid, repo_rev=None))
            assert resolved["repo_rev"] == second
            assert m.backend.get_message(second) == "change one experiment"
    await main()


async def test_runs_hold_checkouts_of_two_revisions_while_the_list_moves_on(tmp_path, bare):
    clone = str(tmp_path / "clone")

    async def main():
        async with Master(str(tmp_path), bare) as m:
            await asyncio.to_thread(git, tmp_path, "clone", "-q", bare, clone)
            write(clone, "helper.py", "OFFSET = 100\n")
            write(clone, "exp.py", experiment("Exp", "Exp", 1))
            first, _ = await push(clone, "one")
            await m.watch.until(lambda: m.db.cur_rev == first)
            run_a = m.backend.request_rev(first)      # what the scheduler does at submit
            write(clone, "helper.py", "OFFSET = 200\n")
            second, _ = await push(clone, "two")
            await m.watch.until(lambda: m.db.cur_rev == second)
            assert m.default("Exp") == 201               # the helper change re-examined Exp
            run_b = m.backend.request_rev(second)
            for revision, offset in [(run_a, 100), (run_b, 200)]:
                with open(os.path.join(revision.workdir, "helper.py")) as f:
                    assert f.read() == f"OFFSET = {offset}\n"
            holds = m.backend.holds()
            assert holds[first] == (run_a.workdir, 1)    # the list no longer holds it
            assert holds[second] == (run_b.workdir, 2)   # the list and run B
            m.backend.release_rev(first)
            assert not os.path.exists(run_a.workdir)
            m.backend.release_rev(second)
            assert os.path.isdir(run_b.workdir)          # still the current revision
    await main()


async def test_commit_in_a_non_bare_repository_rescans_through_post_commit(tmp_path):
    work = str(tmp_path / "repository")
    git(tmp_path, "init", "-q", work)
    write(work, "helper.py", "OFFSET = 0\n")
    write(work, "exp.py", experiment("Exp", "Exp", 1))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")

    async def main():
        async with Master(str(tmp_path), work) as m:
            assert m.db.hook.path == os.path.join(work, ".git", "hooks", "post-commit")
            assert m.default("Exp") == 1
            write(work, "exp.py", experiment("Exp", "Exp", 2))    # a draft: not seen
            write(work, "draft.py", experiment("Draft", "Draft"))
            await m.db.scan_repository()
            assert list(m.db.explist.raw_view) == ["Exp"] and m.default("Exp") == 1
            out = await asyncio.to_thread(git, work, "commit", "-q", "-am", "second")
            assert "is rescanning" in out.stdout + out.stderr
            head = git(work, "rev-parse", "HEAD").stdout.strip()
            await m.watch.until(lambda: m.db.cur_rev == head)
            assert m.default("Exp") == 2 and "Draft" not in m.db.explist.raw_view
    await main()


async def test_an_existing_user_hook_is_never_overwritten(tmp_path, bare, caplog):
    hook = os.path.join(bare, "hooks", "post-receive")
    user_hook = "#!/bin/sh\necho 'deploying the docs'\n"
    with open(hook, "w") as f:
        f.write(user_hook)
    os.chmod(hook, 0o755)

    async def main():
        with caplog.at_level(logging.WARNING, logger="labpipe.master.repository.hooks"):
            async with Master(str(tmp_path), bare) as m:
                assert m.db.hook.status is hooks.HookStatus.FOREIGN
                line = m.db.hook.command
                assert f"--port {m.server.port}" in line
        with open(hook) as f:
            assert f.read() == user_hook
        [record] = [r for r in caplog.records if "not labpipe's" in r.getMessage()]
        assert line in record.getMessage() and hook in record.getMessage()
        # once the user added the line, no more warning
        with open(hook, "a") as f:
            f.write(line + "\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="labpipe.master.repository.hooks"):
            master = Master(str(tmp_path), bare)
            master.db.install_hook(m.server.port)
            master.backend.close()
        assert master.db.hook.status is hooks.HookStatus.FOREIGN
        assert not [r for r in caplog.records if "not labpipe's" in r.getMessage()]
    await main()


async def test_restarting_on_another_port_rewrites_our_hook_only(tmp_path, bare):
    async def main():
        async with Master(str(tmp_path), bare) as first:
            assert first.db.hook.status is hooks.HookStatus.INSTALLED
        async with Master(str(tmp_path), bare) as second:
            assert second.server.port != first.server.port
            assert second.db.hook.status is hooks.HookStatus.UPDATED
            with open(second.db.hook.path) as f:
                assert f"--port {second.server.port}" in f.read()
            second.db.install_hook(second.server.port)
            assert second.db.hook.status is hooks.HookStatus.UNCHANGED
    await main()


def test_notify_with_the_master_down_prints_one_line_and_succeeds():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]     # bound, not listening: connections are refused
        result = subprocess.run(
            [sys.executable, "-m", "labpipe.master.repository.notify", "--port", str(port),
             "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and f"could not ask the master at 127.0.0.1:{port}" in lines[0]
    assert "scan-repository" in lines[0]
