"""The fork server (labpipe.worker.forkserver): real template and child processes."""

import os
import signal

import pytest

from labpipe.worker.forkserver import ForkServer

TARGETS = '''
import os, sys, time

LOADED_AT = time.time()

def echo(conn):
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        conn.send((msg, os.getpid(), LOADED_AT))

def fail(conn):
    raise RuntimeError("target failed")

def exit_with(conn):
    sys.exit(conn.recv())

def hard_exit(conn):
    os._exit(conn.recv())

def hang(conn):
    conn.send("up")
    time.sleep(60)
'''


@pytest.fixture
def server(tmp_path, monkeypatch):
    (tmp_path / "fs_targets.py").write_text(TARGETS)
    monkeypatch.chdir(tmp_path)  # the server imports fs_targets from its cwd
    server = ForkServer(["fs_targets", "no_such_module_here"])
    server.ensure_started()
    yield server
    server.stop()


def test_children_share_the_template_and_talk_over_their_connection(server):
    first, conn1 = server.start("fs_targets:echo")
    second, conn2 = server.start("fs_targets:echo")
    conn1.send("a")
    conn2.send("b")
    (msg1, pid1, loaded1), (msg2, pid2, loaded2) = conn1.recv(), conn2.recv()
    assert (msg1, pid1, msg2, pid2) == ("a", first.pid, "b", second.pid)
    assert pid1 != pid2
    assert loaded1 == loaded2  # imported once, in the template, before the forks
    assert first.is_alive()
    conn1.close()  # the child sees the end of its connection and returns
    first.join(10)
    assert first.exitcode == 0
    assert second.is_alive()
    conn2.close()
    second.join(10)
    assert second.exitcode == 0


@pytest.mark.parametrize("target, value, code", [
    ("fs_targets:fail", None, 1),
    ("fs_targets:exit_with", 3, 3),
    ("fs_targets:exit_with", None, 0),
    ("fs_targets:hard_exit", 7, 7),
])
def test_exit_codes_are_reported(server, target, value, code):
    process, conn = server.start(target)
    if target != "fs_targets:fail":
        conn.send(value)
    process.join(10)
    assert process.exitcode == code


def test_signals_reach_the_child_and_show_in_its_exit_code(server):
    process, conn = server.start("fs_targets:hang")
    assert conn.recv() == "up"
    process.terminate()
    process.join(10)
    assert process.exitcode == -signal.SIGTERM
    process, conn = server.start("fs_targets:hang")
    assert conn.recv() == "up"
    process.kill()
    process.join(10)
    assert process.exitcode == -signal.SIGKILL


def test_sentinel_is_readable_once_the_child_ended(server):
    import select
    process, conn = server.start("fs_targets:hang")
    assert conn.recv() == "up"
    assert select.select([process.sentinel], [], [], 0.05)[0] == []
    process.kill()
    assert select.select([process.sentinel], [], [], 10)[0] == [process.sentinel]


def test_a_dead_server_is_restarted_on_the_next_start(server):
    process, conn = server.start("fs_targets:hang")
    assert conn.recv() == "up"
    os.kill(server._process.pid, signal.SIGKILL)
    server._process.wait()
    # the orphan's exit code cannot be known any more: reported as 255, never hangs;
    # and it died with its server (PR_SET_PDEATHSIG)
    process.join(10)
    assert process.exitcode == 255
    _wait_ended(process.pid)
    again, conn = server.start("fs_targets:echo")
    conn.send("still here")
    assert conn.recv()[0] == "still here"
    conn.close()
    again.join(10)
    assert again.exitcode == 0


def test_stopping_the_server_leaves_children_running(server):
    process, conn = server.start("fs_targets:echo")
    template = server.pid
    server.stop()  # returns although the child runs on (a hang here fails the suite)
    conn.send("after stop")
    assert conn.recv()[0] == "after stop"
    conn.close()
    process.join(10)
    assert process.exitcode == 0  # the server kept reaping until its last child ended
    # and the server, once ended, was reaped in turn: no zombie left behind
    _wait_gone(template)


def test_an_unimportable_preload_module_is_reported_not_fatal(capfd, server):
    # the fixture's server was asked to preload a module that does not exist
    assert "cannot preload no_such_module_here" in capfd.readouterr().err
    process, conn = server.start("fs_targets:echo")
    conn.send(1)
    assert conn.recv()[0] == 1
    conn.close()
    process.join(10)
    assert process.exitcode == 0


def test_close_releases_the_status_pipe(server):
    process, conn = server.start("fs_targets:echo")
    conn.close()
    process.join(10)
    fd = process.sentinel
    process.close()
    assert process.sentinel == -1 and process.exitcode == 0
    with pytest.raises(OSError):
        os.fstat(fd)


def _wait_ended(pid, timeout=10):
    """Wait until pid has ended (gone, or a zombie its new parent has not reaped)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        assert time.monotonic() < deadline, f"process {pid} outlived its fork server"
        time.sleep(0.01)


def _wait_gone(pid, timeout=10):
    """Wait until pid has ended and been reaped (a zombie does not count)."""
    import time
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.01)


def test_children_lead_their_own_process_group(server):
    process, conn = server.start("fs_targets:hang")
    assert conn.recv() == "up"
    assert os.getpgid(process.pid) == process.pid
    assert os.getpgid(server.pid) == server.pid  # the server too: never the caller's
    process.kill()
    process.join(10)
