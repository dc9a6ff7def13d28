"""ExperimentDB scans: examining in worker processes, skipped files with reasons,
incremental rescans, merged scan requests, the RPC methods and submission checks.

Real worker processes; no fixed sleeps: tests wait on notifier mods with a timeout.
"""

import asyncio
import os
import subprocess
import textwrap

import pytest

from labpipe.master.repository.db import ExamineError, ExperimentDB
from labpipe.master.repository.examiner import Examined
from labpipe.master.repository.filesystem import FilesystemBackend
from labpipe.master.repository.git import GitBackend
from labpipe.master.repository.scan import build_explist, cache_entry, plan
from labpipe.master.repository.submission import SubmissionError
from labpipe.protocol.sync import Notifier
from conftest import session_launcher, write_file as write

EXAMINE_TIMEOUT = 1.5


def experiment(cls, title, default=1, extra=""):
    return textwrap.dedent(f'''\
        from labpipe.experiment import *
        {extra}

        class {cls}(EnvExperiment):
            """{title}"""
            def build(self):
                self.setattr_argument("x", NumberValue({default}))

            def run(self):
                pass
        ''')


class Watch:
    """Records the mods of notifiers and wakes waiters on each one."""

    def __init__(self, **notifiers: Notifier):
        self.mods = {name: [] for name in notifiers}
        self._changed = asyncio.Event()
        for name, notifier in notifiers.items():
            notifier.add_listener(lambda mod, name=name: self._on_mod(name, mod))

    def _on_mod(self, name, mod):
        self.mods[name].append(mod)
        self._changed.set()

    async def until(self, predicate, timeout=20.0):
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class Lab:
    def __init__(self, root):
        self.root = str(root)
        self.repo = os.path.join(self.root, "repository")
        os.makedirs(self.repo)

    def write(self, relpath, text):
        write(self.repo, relpath, text)

    def db(self, **kwargs):
        kwargs.setdefault("examine_timeout", EXAMINE_TIMEOUT)
        return ExperimentDB(self.root, FilesystemBackend(self.repo),
                            launcher=session_launcher, **kwargs)


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


# -- pure decisions --------------------------------------------------------------------


def ok(*classes, deps=()):
    return Examined({c: {"name": n, "arginfo": {}, "argument_ui": None,
                         "scheduler_defaults": {}} for c, n in classes}, None, deps)


def test_explist_names_follow_folders_and_are_made_unique():
    results = {
        "a.py": ok(("Scan", "Scan"), ("Other", "A/B test")),
        "b.py": ok(("Scan2", "Scan"), ("Scan3", "Scan")),
        "calib/rabi.py": ok(("Rabi", "Scan")),
        "bad.py": Examined(None, "SyntaxError: invalid syntax (bad.py, line 1)"),
        "helper.py": ok(),
    }
    explist, errors = build_explist(results)
    assert list(explist) == ["Scan", "A_B test", "Scan1", "Scan2", "calib/Scan"]
    assert explist["Scan1"]["file"] == "b.py" and explist["Scan1"]["class_name"] == "Scan2"
    assert explist["calib/Scan"]["file"] == "calib/rabi.py"
    assert errors == {"bad.py": "SyntaxError: invalid syntax (bad.py, line 1)"}
    # with an experiment subdirectory, names are relative to it, files to the root
    explist, _ = build_explist({"exps/calib/rabi.py": ok(("Rabi", "Rabi")),
                                "exps/top.py": ok(("Top", "Top"))}, "exps")
    assert explist == {
        "calib/Rabi": {"file": "exps/calib/rabi.py", "class_name": "Rabi", "arginfo": {},
                       "argument_ui": None, "scheduler_defaults": {}},
        "Top": {"file": "exps/top.py", "class_name": "Top", "arginfo": {},
                "argument_ui": None, "scheduler_defaults": {}},
    }


def test_plan_reexamines_changed_files_and_files_whose_imports_changed():
    listing = {"a.py": "A1", "b.py": "B1", "lib.py": "L1"}
    cache = {("a.py", "A1"): cache_entry(ok(("A", "A"), deps=("lib.py",)), listing),
             ("b.py", "B1"): cache_entry(ok(("B", "B")), listing),
             ("lib.py", "L1"): cache_entry(ok(), listing)}
    assert plan(listing, listing, cache) == (
        {p: cache[(p, c)] for p, c in listing.items()}, [])
    changed = dict(listing, **{"lib.py": "L2"})
    reused, todo = plan(changed, changed, cache)
    assert todo == ["a.py", "lib.py"] and list(reused) == ["b.py"]
    changed = dict(listing, **{"b.py": "B2"})
    assert plan(changed, changed, cache)[1] == ["b.py"]
    gone = {"a.py": "A1", "b.py": "B1"}
    assert plan(gone, gone, cache)[1] == ["a.py"]   # its import vanished


# -- scans in worker processes ---------------------------------------------------------


async def test_scan_lists_experiments_and_publishes_every_skipped_file(lab):
    lab.write("good.py", experiment("Good", "Good experiment") + textwrap.dedent('''
        class Second(EnvExperiment):
            def run(self):
                pass

        class _Private(EnvExperiment):
            def run(self):
                pass
        '''))
    lab.write("calib/rabi.py", experiment("Rabi", "Rabi flop."))
    # (files that use labpipe: a plain script is never imported by a scan, see below)
    lab.write("hang.py", "import time\nimport labpipe.experiment\ntime.sleep(300)\n")
    lab.write("syntax.py", "from labpipe.experiment import *\nclass X(:\n")
    lab.write("crash.py", "import os\nimport labpipe.experiment\nos._exit(3)\n")
    lab.write("raises.py", "from labpipe.experiment import *\n\nraise RuntimeError('no device here')\n")
    lab.write("helper.py", "VALUE = 3\n")
    lab.write(".hidden/secret.py", experiment("Secret", "Secret"))
    lab.write("notes.txt", "not python")
    lab.write("zz_last.py", experiment("Last", "Last one"))

    async def main():
        db = lab.db()
        try:
            await db.start()
            assert sorted(db.explist.raw_view) == [
                "Good experiment", "Last one", "Second", "calib/Rabi flop"]
            entry = db.explist.raw_view["calib/Rabi flop"]
            assert entry["file"] == "calib/rabi.py" and entry["class_name"] == "Rabi"
            assert entry["arginfo"]["x"][0]["ty"] == "NumberValue"
            assert set(entry) == {"file", "class_name", "arginfo", "argument_ui",
                                  "scheduler_defaults"}
            errors = db.explist_errors.raw_view
            assert sorted(errors) == ["crash.py", "hang.py", "raises.py", "syntax.py"]
            assert "longer than 1.5 s" in errors["hang.py"]
            assert errors["syntax.py"].startswith("SyntaxError:") and "line 2" in errors["syntax.py"]
            assert "died" in errors["crash.py"] and "exit code 3" in errors["crash.py"]
            assert errors["raises.py"] == "RuntimeError: no device here (raises.py, line 3)"
            assert all("\n" not in reason for reason in errors.values())
            assert db.explist_status.raw_view == {"scanning": False, "cur_rev": "N/A"}
            # the pool recovered from the kill and the crash
            assert (await db.examine("zz_last.py"))["Last"]["name"] == "Last one"
        finally:
            await db.close()
    await main()


async def test_rescan_examines_only_what_changed_and_publishes_minimal_mods(lab):
    for i in range(12):
        lab.write(f"e{i:02}.py", experiment(f"E{i}", f"Experiment {i}", default=i))
    lab.write("lib/helper.py", "DEFAULT = 5\n")
    lab.write("lib/uses_helper.py", experiment("Uses", "Uses helper", default="helper.DEFAULT",
                                               extra="import helper"))
    lab.write("lib/bystander.py", experiment("Bystander", "Bystander"))

    async def main():
        db = lab.db()
        watch = Watch(explist=db.explist, errors=db.explist_errors)
        try:
            await db.start()
            assert db.pool.examined == 15
            assert len(db.explist.raw_view) == 14
            assert db.explist.raw_view["lib/Uses helper"]["arginfo"]["x"][0]["default"] == 5
            watch.mods["explist"].clear()

            await db.scan_repository()                      # nothing changed
            assert db.last_scan.examined == () and db.pool.examined == 15
            assert watch.mods["explist"] == []

            lab.write("e03.py", experiment("E3", "Experiment 3", default=33))
            await db.scan_repository()
            assert db.last_scan.examined == ("e03.py",)
            assert db.pool.examined == 16
            [mod] = watch.mods["explist"]
            assert (mod["action"], mod["key"]) == ("setitem", "Experiment 3")
            assert mod["value"]["arginfo"]["x"][0]["default"] == 33
            watch.mods["explist"].clear()

            lab.write("lib/helper.py", "DEFAULT = 7\n")     # only its importer is redone
            await db.scan_repository()
            assert db.last_scan.examined == ("lib/helper.py", "lib/uses_helper.py")
            [mod] = watch.mods["explist"]
            assert mod["key"] == "lib/Uses helper"
            assert mod["value"]["arginfo"]["x"][0]["default"] == 7
            watch.mods["explist"].clear()

            os.remove(os.path.join(lab.repo, "e05.py"))
            lab.write("broken.py", "x = (\n")
            await db.scan_repository()
            assert db.last_scan.examined == ("broken.py",)
            assert watch.mods["explist"] == [
                {"action": "delitem", "path": [], "key": "Experiment 5"}]
            assert [m["key"] for m in watch.mods["errors"]] == ["broken.py"]
        finally:
            await db.close()
    await main()


async def test_fixing_a_broken_helper_reexamines_its_importer(lab):
    lab.write("helper.py", "DEFAULT = (\n")
    lab.write("exp.py", experiment("Exp", "Exp", default="helper.DEFAULT", extra="import helper"))

    async def main():
        db = lab.db()
        try:
            await db.start()
            assert "helper.py" in db.explist_errors.raw_view["exp.py"]
            lab.write("helper.py", "DEFAULT = 4\n")
            await db.scan_repository()
            assert db.explist_errors.raw_view == {}
            assert db.explist.raw_view["Exp"]["arginfo"]["x"][0]["default"] == 4
        finally:
            await db.close()
    await main()


class SignallingBackend(FilesystemBackend):
    """Sets ``listed`` (an asyncio.Event) each time a listing is done."""

    def __init__(self, root, loop, listed):
        super().__init__(root)
        self._loop, self._listed = loop, listed

    def list_files(self, subdir="", rev=None):
        listing = super().list_files(subdir, rev)
        self._loop.call_soon_threadsafe(self._listed.set)
        return listing


async def test_requests_during_a_scan_merge_into_one_more_scan(lab):
    lab.write("first.py", experiment("First", "First"))

    async def main():
        listed = asyncio.Event()
        backend = SignallingBackend(lab.repo, asyncio.get_running_loop(), listed)
        db = ExperimentDB(lab.root, backend, examine_timeout=EXAMINE_TIMEOUT,
                          launcher=session_launcher)
        scans = []
        db.explist_status.add_listener(
            lambda mod: scans.append(1) if mod.get("key") == "scanning" and mod["value"] else None)
        try:
            await db.start()
            assert len(scans) == 1
            lab.write("slow.py", "import time\ntime.sleep(0.4)\n" + experiment("Slow", "Slow"))
            listed.clear()
            first = asyncio.create_task(db.scan_repository())
            await listed.wait()       # the running scan has listed the files
            lab.write("late.py", experiment("Late", "Late"))
            others = [asyncio.create_task(db.scan_repository()) for _ in range(3)]
            await db.scan_repository_async()
            await first
            assert "Slow" in db.explist.raw_view and "Late" not in db.explist.raw_view
            await asyncio.gather(*others)
            # one scan for the request made before, exactly one more for the four during it
            assert len(scans) == 3
            assert "Late" in db.explist.raw_view     # the change made during the scan is not lost
            assert db.last_scan.examined == ("late.py",)
        finally:
            await db.close()
    await main()


async def test_scan_repository_async_returns_at_once(lab):
    lab.write("a.py", experiment("A", "A"))

    async def main():
        db = lab.db()
        watch = Watch(explist=db.explist)
        try:
            await db.start()
            lab.write("b.py", "import time\ntime.sleep(0.3)\n" + experiment("B", "B"))
            await db.scan_repository_async()
            assert "B" not in db.explist.raw_view   # b.py takes 0.3 s to import
            await watch.until(lambda: "B" in db.explist.raw_view)
        finally:
            await db.close()
    await main()


async def test_experiment_subdir_and_sibling_imports(lab):
    lab.write("outside.py", experiment("Outside", "Outside"))
    lab.write("exps/calib/helper.py", "DEFAULT = 11\n")
    lab.write("exps/calib/rabi.py", experiment("Rabi", "Rabi", default="helper.DEFAULT",
                                               extra="import helper"))

    async def main():
        db = lab.db(experiment_subdir="exps/")
        try:
            await db.start()
            assert list(db.explist.raw_view) == ["calib/Rabi"]
            entry = db.explist.raw_view["calib/Rabi"]
            assert entry["file"] == "exps/calib/rabi.py"
            assert entry["arginfo"]["x"][0]["default"] == 11
        finally:
            await db.close()
    await main()


async def test_git_backend_scan_imports_siblings_from_the_checkout(tmp_path):
    work = str(tmp_path / "work")
    env = {**os.environ, "GIT_AUTHOR_NAME": "L", "GIT_AUTHOR_EMAIL": "l@x",
           "GIT_COMMITTER_NAME": "L", "GIT_COMMITTER_EMAIL": "l@x",
           "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "init", "-q", work], check=True, env=env)
    write(work, "lib_value.py", "DEFAULT = 21\n")
    write(work, "exp.py", experiment("Exp", "Exp", default="lib_value.DEFAULT",
                                     extra="import lib_value"))
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "c"], cwd=work, check=True, env=env)
    write(work, "lib_value.py", "DEFAULT = 99\n")   # uncommitted: must not be seen

    async def main():
        backend = GitBackend(work)
        db = ExperimentDB(str(tmp_path), backend, examine_timeout=EXAMINE_TIMEOUT,
                          launcher=session_launcher)
        try:
            await db.start()
            assert db.explist.raw_view["Exp"]["arginfo"]["x"][0]["default"] == 21
            assert db.cur_rev == backend.get_cur_rev()
            [(commit, (workdir, holds))] = backend.holds().items()
            assert commit == db.cur_rev and holds == 1
        finally:
            await db.close()
        assert backend.holds() == {}
        assert not os.path.exists(workdir)
        backend.close()
    await main()


# -- RPC methods -----------------------------------------------------------------------


def test_list_directory_is_limited_to_the_lab_and_the_repository(lab, tmp_path_factory):
    lab.write("a.py", "")
    lab.write("sub/b.py", "")
    outside = str(tmp_path_factory.mktemp("outside"))
    os.symlink(outside, os.path.join(lab.root, "escape"))
    db = lab.db()
    assert db.root() == lab.root
    assert db.list_directory("") == ["escape/", "repository/"]
    assert db.list_directory("repository") == ["a.py", "sub/"]
    assert db.list_directory(os.path.join(lab.repo, "sub")) == ["b.py"]
    for refused in ["/", "/etc", "..", "repository/../..", "escape", outside]:
        with pytest.raises(PermissionError, match="outside the lab directory"):
            db.list_directory(refused)
    assert set(db.rpc_target.__class__.__dict__) >= {
        "scan_repository", "scan_repository_async", "examine", "list_directory", "root"}
    assert not hasattr(db.rpc_target, "close") and not hasattr(db.rpc_target, "start")


async def test_examine_repository_and_raw_files(lab):
    lab.write("exp.py", experiment("Exp", "Exp", default=2))
    write(lab.root, "drafts/draft.py", experiment("Draft", "Draft", default=3))
    lab.write("bad.py", "x = (\n")

    async def main():
        db = lab.db()
        try:
            await db.start()
            assert (await db.rpc_target.examine("exp.py"))["Exp"]["arginfo"]["x"][0]["default"] == 2
            raw = await db.rpc_target.examine("drafts/draft.py", use_repository=False)
            assert raw["Draft"]["name"] == "Draft"
            with pytest.raises(ExamineError, match=r"^bad.py: SyntaxError"):
                await db.examine("bad.py")
            with pytest.raises(FileNotFoundError):
                await db.examine("nope.py")
            with pytest.raises(ValueError, match="outside the repository"):
                await db.examine("../drafts/draft.py")
        finally:
            await db.close()
    await main()


async def test_check_submission_refuses_bad_expids_at_once(lab):
    lab.write("exp.py", experiment("Exp", "Exp"))
    lab.write("two.py", experiment("Alpha", "Alpha") + experiment("Beta", "Beta"))
    write(lab.root, "drafts/draft.py", experiment("Draft", "Draft"))

    async def main():
        db = lab.db()
        try:
            await db.start()
            expid = {"file": "exp.py", "class_name": "Exp", "arguments": {}, "repo_rev": None}
            assert await db.check_submission(expid) == dict(expid, repo_rev="N/A")
            raw = {"file": "drafts/draft.py", "class_name": None, "arguments": {}}
            assert await db.check_submission(raw) == raw
            content = {"content": experiment("C", "C"), "class_name": None}
            assert await db.check_submission(content) == content
            refused = [
                ({"file": "exp.py", "class_name": "Nope", "repo_rev": None},
                 "exp.py has no experiment class 'Nope' (experiments in it: Exp)"),
                ({"file": "missing.py", "class_name": None, "repo_rev": None},
                 "experiment file 'missing.py' does not exist in the repository folder"),
                ({"file": "two.py", "class_name": None, "repo_rev": None},
                 "two.py holds several experiments (Alpha, Beta): give the class name"),
                ({"file": "exp.py", "repo_rev": "main"}, "unknown revision 'main'"),
                ({"file": "drafts/nope.py", "class_name": None}, "not found: without repo_rev"),
                ({"file": "drafts/draft.py", "class_name": "Other"}, "no experiment class 'Other'"),
                ({"content": "class X(:\n"}, "submitted content does not compile"),
                ({"class_name": "X"}, "expid needs a file"),
            ]
            for bad, message in refused:
                with pytest.raises(SubmissionError) as info:
                    await db.check_submission(bad)
                assert message in str(info.value) and "\n" not in str(info.value)
        finally:
            await db.close()
    await main()
