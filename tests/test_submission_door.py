"""What a local client can make the master compile, import or run (issue 13): user code
only in examining processes with limits, labpipe.toml [security] folders and content,
non-Python files refused at submit, callers of examine/validate logged, content
fingerprints in the history."""

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time

import pytest

from conftest import expid, run_ends, running_master, wait_until
from labpipe.config import (ConfigError, ExamineConfig, LabConfig, SecurityConfig,
                            config_from_dict, load_config)
from labpipe.protocol.rpc import AsyncClient

EXP = """
from labpipe.experiment import *

class Hello(EnvExperiment):
    def run(self):
        self.set_dataset("hello", 1)
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def rpc(master, target):
    client = AsyncClient()
    await client.connect_rpc("127.0.0.1", master.port("control"), target)
    return client


async def test_pathological_content_is_compiled_outside_the_master(lab):
    # ~2 MB that takes CPython seconds and ~700 MB to compile (measured: 4 MB of
    # such source froze a master that compiled it itself for 11 s, +2.1 GiB)
    source = "x = [" + "1," * 1_000_000 + "]\n"
    config = LabConfig(examine=ExamineConfig(content_memory_mb=256))

    async def main():
        async with running_master(lab, config=config) as m:
            submitter, watcher = await rpc(m, "schedule"), await rpc(m, "schedule")
            try:
                before = rss_bytes()
                peak, answers = before, 0
                submit = asyncio.ensure_future(
                    submitter.submit("main", expid(content=source)))
                while not submit.done() or answers == 0:
                    started = time.monotonic()
                    assert await watcher.get_status() == {}
                    assert time.monotonic() - started < 1.0  # liveness, not speed
                    answers += 1
                    peak = max(peak, rss_bytes())
                    await asyncio.sleep(0.02)
                with pytest.raises(ValueError) as refused:
                    await submit
                message = str(refused.value)
                assert "compiling the submitted content needs more memory" in message
                assert peak - before < 200 << 20, (peak - before) >> 20
                # the examiner that hit its limit still serves
                rid = await submitter.submit("main", expid(content=EXP))
                assert isinstance(rid, int)
            finally:
                submitter.close_rpc()
                watcher.close_rpc()

    await main()


async def test_non_python_file_is_refused_without_running_it(lab):
    lab.write("secret.txt", "sk_live_0123456789abcdef\n")
    lab.write("notes", "token = sk_live_0123456789abcdef\n")
    lab.write("tool", "#!/usr/bin/env python3\nprint('tool ran')\n")
    lab.write("exp.txt", EXP)  # an experiment, whatever its name

    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            for name in ("secret.txt", "notes"):
                with pytest.raises(ValueError) as refused:
                    await m.scheduler.submit("main", expid(file=name))
                message = str(refused.value)
                assert f"{name} is neither an experiment nor a Python script" in message
                assert "sk_live" not in message and "\n" not in message
            for name in ("tool", "exp.txt"):
                rid = await m.scheduler.submit("main", expid(file=name))
                await wait_until(lambda: rid in ends, timeout=30)
                assert ends[rid].status == "completed", ends[rid].error

    await main()


async def test_raw_files_only_in_allowed_folders(lab, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "exp.py").write_text(EXP)
    os.symlink(outside / "exp.py", lab.path("link.py"))

    async def main():
        async with running_master(lab) as m:
            db = m.experiment_db
            for name in (str(outside / "exp.py"), "link.py"):
                with pytest.raises(PermissionError) as refused:
                    await m.scheduler.submit("main", expid(file=name))
                assert repr(name) in str(refused.value)
                assert "allow_files_anywhere" in str(refused.value)
                with pytest.raises(PermissionError, match="allow_files_anywhere"):
                    await db.rpc_target.examine(name, use_repository=False)
            examiner = await rpc(m, "experiment_db")
            try:
                with pytest.raises(ValueError, match="outside the folders"):
                    await examiner.examine(str(outside / "exp.py"), False)
            finally:
                examiner.close_rpc()
    await main()

    for toml in ("[security]\nallow_files_anywhere = true\n",
                 f"[security]\nfile_folders = [{str(outside)!r}]\n"):
        lab.write("labpipe.toml", toml)

        async def allowed():
            async with running_master(lab) as m:
                ends = run_ends(m.scheduler)
                rid = await m.scheduler.submit("main", expid(file=str(outside / "exp.py")))
                await wait_until(lambda: rid in ends, timeout=30)
                assert ends[rid].status == "completed", ends[rid].error
                assert "Hello" in await m.experiment_db.examine(
                    str(outside / "exp.py"), use_repository=False)
        await allowed()


async def test_content_submission_can_be_turned_off(lab):
    lab.write("labpipe.toml", "[security]\nallow_content = false\n")

    async def main():
        async with running_master(lab) as m:
            assert m.config.security == SecurityConfig(allow_content=False)
            with pytest.raises(ValueError, match=r"allow_content = false"):
                await m.scheduler.submit("main", expid(content=EXP))
    await main()


async def test_content_runs_with_its_fingerprint_in_the_history(lab):
    async def main():
        async with running_master(lab) as m:
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit("main", expid(content=EXP))
            await wait_until(lambda: rid in ends, timeout=30)
            assert ends[rid].status == "completed", ends[rid].error
            await wait_until(lambda: rid in m.history.notifier.raw_view)
            record = await m.history.get(rid)
            data = EXP.encode()
            assert record["content"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                         "size": len(data)}
            other = await m.scheduler.submit("main", expid(content=EXP + "# 2\n"))
            await wait_until(lambda: other in m.history.notifier.raw_view, timeout=30)
            assert (await m.history.get(other))["content"]["size"] == len(data) + 4
    await main()


async def test_examine_and_validate_log_the_callers_address(lab, caplog):
    lab.write("repository/hello.py", EXP)

    async def main():
        async with running_master(lab) as m:
            examiner, schedule = await rpc(m, "experiment_db"), await rpc(m, "schedule")
            try:
                with caplog.at_level(logging.INFO):
                    await examiner.examine("hello.py")
                    await schedule.validate("main", expid(content=EXP))
                ports = {examiner._writer.get_extra_info("sockname")[1],
                         schedule._writer.get_extra_info("sockname")[1]}
            finally:
                examiner.close_rpc()
                schedule.close_rpc()
            lines = [r.getMessage() for r in caplog.records
                     if "called by 127.0.0.1:" in r.getMessage()]
            assert any(line.startswith("examine('hello.py'") for line in lines), lines
            assert any(line.startswith("validate('main'") and "with content" in line
                       for line in lines), lines
            assert {int(line.rsplit(":", 1)[1]) for line in lines} == ports
    await main()


# labpipe.toml itself --------------------------------------------------------------

def test_config_defaults_and_values(tmp_path):
    assert load_config(str(tmp_path)) == LabConfig()
    (tmp_path / "labpipe.toml").write_text(
        "[security]\nallow_files_anywhere = true\nfile_folders = ['a', '/b']\n"
        "[examine]\ntimeout = 3\n")
    config = load_config(str(tmp_path))
    assert config.security == SecurityConfig(True, ("a", "/b"), True)
    assert config.examine.timeout == 3.0 and isinstance(config.examine.timeout, float)


@pytest.mark.parametrize("data, words", [
    ({"security": {"allow_content": "yes"}},
     "[security] allow_content: expected true or false, not 'yes'"),
    ({"security": {"allow_everything": True}},
     "[security] unknown key 'allow_everything' (valid keys: allow_content, "
     "allow_files_anywhere, file_folders)"),
    ({"securty": {}}, "unknown section [securty] (valid sections: client, examine, functions, "
     "lock, master, "
     "permissions, ports, qserver, security)"),
    ({"security": {"file_folders": "/tmp"}}, "[security] file_folders: expected a list"),
    ({"security": {"file_folders": [1]}}, "[security] file_folders[0]: expected a string"),
    ({"examine": {"timeout": 0}}, "[examine] timeout: must be positive"),
    ({"examine": {"memory_mb": 1.5}}, "[examine] memory_mb: expected an integer"),
    ({"security": 3}, "[security] must be a table"),
])
def test_config_errors_are_one_line_naming_the_key(data, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert message.startswith("labpipe.toml: ") and words in message and "\n" not in message


def test_master_refuses_a_bad_labpipe_toml_with_one_line(lab):
    lab.write("labpipe.toml", "[security]\nallow_content = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1", "--port-control",
         "0", "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0"],
        cwd=lab.root, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["labpipe-master: labpipe.toml: [security] allow_content: expected "
                     "true or false, not 1"], result.stderr
    with open(lab.path("labpipe.toml"), "w") as f:
        f.write("[security\n")
    result = subprocess.run(
        [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1", "--port-control",
         "0", "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0"],
        cwd=lab.root, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("labpipe-master: labpipe.toml: not valid TOML")


async def test_examination_has_a_memory_limit(lab):
    lab.write("hog.py", """
        from labpipe.experiment import *

        HOARD = bytearray(3 << 30)

        class Hog(EnvExperiment):
            def run(self):
                pass
    """)

    async def main():
        async with running_master(lab) as m:
            for call in (m.scheduler.submit("main", expid(file="hog.py")),
                         m.experiment_db.examine("hog.py", use_repository=False)):
                with pytest.raises(Exception) as refused:
                    await call
                assert "importing hog.py needs more memory than the examiner's limit" \
                    in str(refused.value)
            problems = await m.scheduler.validate("main", expid(file="hog.py"))
            assert any("needs more memory" in p for p in problems), problems
    await main()
