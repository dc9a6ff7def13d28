"""labpipe-ctlmgr against a real master: this host's controllers of the device database
started (real processes speaking labpipe's RPC), their output forwarded to the master's
logging port (a traceback as one record), a killed or silent controller restarted, a
rescan touching exactly the controllers it changed, the master going away and back,
and the manager's stop leaving no process behind."""

import asyncio
import logging
import os
import signal
import subprocess
import sys

import pytest

from conftest import free_ports, process_alive, running_master, wait_until
from labpipe.ctlmgr.entries import EntryError, command_line, select
from labpipe.protocol.broadcast import Receiver
from labpipe.protocol.logs import REMOTE_LOGGER
from labpipe.protocol.rpc import AsyncClient

HOST = "127.0.0.1"
CONTROLLER = os.path.join(os.path.dirname(__file__), "ctlmgr_controller.py")


def controller(port, host="localhost", extra="", **timers):
    entry = {"type": "controller", "host": host, "port": port,
             "command": f"{sys.executable} {CONTROLLER} --name {{name}} --bind {{bind}} "
                        f"--port {{port}} {extra}",
             "ping_timer": 0.3, "ping_timeout": 2.0, "retry_timer": 0.1,
             "term_timeout": 2.0}
    entry.update(timers)
    return entry


def write_db(lab, entries):
    lab.write("device_db.py", f"device_db = {entries!r}\n")


async def rpc(port, target, method, *args, ssl=None):
    client = AsyncClient()
    await client.connect_rpc(HOST, port, target, ssl=ssl)
    try:
        return await getattr(client, method)(*args)
    finally:
        client.close_rpc()


class Manager:
    """labpipe-ctlmgr in a subprocess against master m."""

    def __init__(self, m, *extra):
        self.m = m
        self.extra = extra

    async def __aenter__(self):
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labpipe.ctlmgr", "-s", HOST,
            "--port-notify", str(self.m.port("notify")),
            "--port-logging", str(self.m.port("logging")),
            "--port", "0", "--retry-master", "0.2", *self.extra,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        assert "ready" in line, line + (await self.process.stderr.read()).decode()
        self.port = int(line.rsplit(" ", 1)[1])
        self._drain = asyncio.gather(self.process.stdout.read(), self.process.stderr.read())
        return self

    async def list(self):
        return {c["name"]: c for c in await rpc(self.port, "ctlmgr", "list")}

    async def wait_running(self, *names, starts=None):
        async def ok():
            listed = await self.list()
            for name in names:
                c = listed.get(name)
                if c is None or c["state"] != "running" or c["pid"] is None:
                    return False
                if starts is not None and c["starts"] < starts:
                    return False
                try:
                    await rpc(c["port"], "ctl", "ping")
                except OSError:
                    return False
            return listed
        for _ in range(300):
            if listed := await ok():
                return listed
            await asyncio.sleep(0.05)
        raise AssertionError(f"not running: {names}: {await self.list()}")

    async def stop(self):
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        out, err = await self._drain
        return code, err.decode()

    async def __aexit__(self, *exc):
        if self.process.returncode is None:
            await self.stop()


async def log_receiver(m):
    messages = []
    receiver = Receiver("log", messages.append)
    await receiver.connect(HOST, m.port("broadcast"))
    await wait_until(lambda: m.broadcaster.receiver_count("log") == 1)
    return receiver, messages


def gone(pid):
    return not process_alive(pid)


@pytest.fixture
def remote_at_info():
    """labpipe-master's root level is INFO (pytest leaves WARNING): INFO lines pass."""
    remote = logging.getLogger(REMOTE_LOGGER)
    saved = remote.level
    remote.setLevel(logging.INFO)
    yield
    remote.setLevel(saved)


async def test_controllers_of_this_host_run_log_restart_and_stop(lab, remote_at_info):
    a, b, far = free_ports(3)
    write_db(lab, {"ctl_a": controller(a, "localhost", "--traceback --tag A"),
                   "ctl_b": controller(b, "127.0.0.1", "--tag B"),
                   "ctl_far": controller(far, "192.0.2.1"),
                   "core": {"type": "local", "module": "m", "class": "C"}})
    async with running_master(lab) as m:
        receiver, messages = await log_receiver(m)
        try:
            async with Manager(m) as mgr:
                listed = await mgr.wait_running("ctl_a", "ctl_b")
                assert set(listed) == {"ctl_a", "ctl_b"}  # not 192.0.2.1's
                assert await rpc(a, "ctl", "tag") == "A"
                assert listed["ctl_a"]["argv"][1:7] == [CONTROLLER, "--name", "ctl_a",
                                                        "--bind", HOST, "--port"]

                def texts(source):
                    return [(lvl, text) for lvl, src, _, text in messages if src == source]
                await wait_until(lambda: any("serving B" in t
                                             for _, t in texts("controller(ctl_b)")))
                await wait_until(lambda: any("Traceback" in t
                                             for _, t in texts("controller(ctl_a)")))
                level, text = next((lvl, t) for lvl, t in texts("controller(ctl_a)")
                                   if "Traceback" in t)
                lines = text.split("\n")
                assert level == 40
                assert lines[0] == "ctl.ctl_a:opening the device failed"
                assert lines[1] == "Traceback (most recent call last):"
                assert lines[-1] == "ValueError: ctl_a: device not responding"

                # killed: started again
                pid_a = listed["ctl_a"]["pid"]
                os.kill(pid_a, signal.SIGKILL)
                listed = await mgr.wait_running("ctl_a", starts=2)
                assert listed["ctl_a"]["pid"] != pid_a
                assert listed["ctl_a"]["last_exit"] == -signal.SIGKILL
                assert listed["ctl_b"]["starts"] == 1

                # restarted on request
                await rpc(mgr.port, "ctlmgr", "restart", "ctl_b")
                listed = await mgr.wait_running("ctl_b", starts=2)
                pids = [c["pid"] for c in listed.values()]
                code, err = await mgr.stop()
                assert code == 0, err
                assert all(gone(pid) for pid in pids)
        finally:
            await receiver.close()


async def test_a_rescan_touches_exactly_the_controllers_it_changed(lab):
    a, b, c, d = free_ports(4)
    write_db(lab, {"ctl_a": controller(a), "ctl_b": controller(b),
                   "ctl_c": controller(c, extra="--tag old")})
    async with running_master(lab) as m, Manager(m) as mgr:
        before = await mgr.wait_running("ctl_a", "ctl_b", "ctl_c")
        write_db(lab, {"ctl_a": controller(a), "ctl_c": controller(c, extra="--tag new"),
                       "ctl_d": controller(d)})
        await rpc(m.port("control"), "device_db", "scan")
        after = await mgr.wait_running("ctl_a", "ctl_c", "ctl_d")
        await wait_until(lambda: gone(before["ctl_b"]["pid"]))
        after = await mgr.list()
        assert set(after) == {"ctl_a", "ctl_c", "ctl_d"}
        assert after["ctl_a"]["pid"] == before["ctl_a"]["pid"]  # untouched
        assert after["ctl_a"]["starts"] == 1
        assert await rpc(c, "ctl", "tag") == "new"
        assert after["ctl_c"]["pid"] != before["ctl_c"]["pid"]
        assert gone(before["ctl_c"]["pid"])


async def test_a_silent_controller_is_restarted_and_a_stubborn_one_killed_with_its_group(lab):
    quiet, stubborn = free_ports(2)
    write_db(lab, {"ctl_quiet": controller(quiet, extra="--no-ping", ping_timer=0.2),
                   "ctl_stubborn": controller(stubborn, extra="--ignore-term --child",
                                              term_timeout=0.3)})
    async with running_master(lab) as m, Manager(m) as mgr:
        await mgr.wait_running("ctl_quiet", starts=2)  # ping() said False: restarted
        listed = await mgr.wait_running("ctl_stubborn")
        pid = listed["ctl_stubborn"]["pid"]
        # its child, in its process group
        children = [int(p) for p in os.listdir("/proc") if p.isdigit()
                    and _ppid(int(p)) == pid]
        assert children
        code, err = await mgr.stop()
        assert code == 0, err
        assert gone(pid) and all(gone(child) for child in children)
        assert "SIGKILL" in err


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


async def test_the_manager_survives_the_master_going_away_and_back(lab):
    a, b = free_ports(2)
    write_db(lab, {"ctl_a": controller(a)})
    async with running_master(lab) as m:
        ports = {name: m.port(name) for name in ("notify", "control", "logging",
                                                 "broadcast")}
        mgr = Manager(m)
        await mgr.__aenter__()
        try:  # the manager has the master's controllers before the master goes away
            before = await mgr.wait_running("ctl_a")
        except BaseException:
            await mgr.__aexit__(None, None, None)
            raise
    try:
        await asyncio.sleep(0.5)  # the master is away; its controllers keep running
        assert (await mgr.list())["ctl_a"]["pid"] == before["ctl_a"]["pid"]
        write_db(lab, {"ctl_a": controller(a), "ctl_b": controller(b)})
        async with running_master(lab, port_notify=ports["notify"],
                                  port_control=ports["control"],
                                  port_logging=ports["logging"],
                                  port_broadcast=ports["broadcast"]):
            after = await mgr.wait_running("ctl_a", "ctl_b")
            assert after["ctl_a"]["pid"] == before["ctl_a"]["pid"]
            code, err = await mgr.stop()
            assert code == 0, err
    finally:
        await mgr.__aexit__(None, None, None)


def test_bad_options_and_entries_are_one_line():
    result = subprocess.run([sys.executable, "-m", "labpipe.ctlmgr", "--port-notify",
                             "99999"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "not a TCP port" in result.stderr and "Traceback" not in result.stderr
    wanted, errors = select({"x": {"type": "controller", "host": "localhost", "port": 1,
                                   "command": "run {nope}"},
                             "y": {"type": "controller", "host": "localhost",
                                   "port": "p", "command": "run"}}, "127.0.0.1")
    assert wanted == {} and len(errors) == 2
    assert all("\n" not in e for e in errors)
    with pytest.raises(EntryError, match="plain name"):
        command_line("x", {"command": "run {port.real}", "port": 1}, "h")
    assert command_line("x", {"command": "aqctl --bind {bind} -p {port} 'a b'",
                              "port": 5}, "::1") == ("aqctl", "--bind", "::1", "-p", "5",
                                                     "a b")


def test_loopback_entries_count_as_this_host_when_the_master_is_local():
    db = {name: {"type": "controller", "host": name, "port": 1, "command": "c"}
          for name in ("::1", "localhost", "127.0.0.1", "192.0.2.1")}
    assert set(select(db, "127.0.0.1")[0]) == {"::1", "localhost", "127.0.0.1"}
    assert set(select(db, "192.0.2.1")[0]) == {"192.0.2.1"}


async def test_with_ssl_the_manager_speaks_tls_to_the_master_and_on_its_own_port(
        lab, tmp_path, remote_at_info):
    from labpipe.protocol.tls import TLSFiles, client_context
    from tls_certs import make_certs
    certs = make_certs(str(tmp_path / "certs"))
    files = certs.client_files()
    (a,) = free_ports(1)
    write_db(lab, {"ctl_a": controller(a, extra="--tag T")})
    async with running_master(lab, tls=certs.server_files()) as m:
        trusted = client_context(files)
        messages = []
        receiver = Receiver("log", messages.append)
        await receiver.connect(HOST, m.port("broadcast"), ssl=trusted)
        try:
            async with Manager(m, "--ssl", files.cert, files.key, files.peer) as mgr:
                own = client_context(TLSFiles(files.cert, files.key, files.cert))
                for _ in range(300):
                    listed = {c["name"]: c for c in
                              await rpc(mgr.port, "ctlmgr", "list", ssl=own)}
                    if listed.get("ctl_a", {}).get("pid"):
                        break
                    await asyncio.sleep(0.05)
                assert listed["ctl_a"]["state"] == "running"
                await wait_until(lambda: any(src == "controller(ctl_a)" and "serving T" in t
                                             for _, src, _, t in messages))
                with pytest.raises(Exception):  # its own port is TLS only
                    await asyncio.wait_for(rpc(mgr.port, "ctlmgr", "list"), 5)
                code, err = await mgr.stop()
                assert code == 0, err
        finally:
            await receiver.close()


async def test_a_killed_manager_leaves_no_controller_running(lab):
    (a,) = free_ports(1)
    write_db(lab, {"ctl_a": controller(a)})
    async with running_master(lab) as m, Manager(m) as mgr:
        pid = (await mgr.wait_running("ctl_a"))["ctl_a"]["pid"]
        mgr.process.kill()
        await mgr.process.wait()
        for _ in range(200):
            if gone(pid):
                break
            await asyncio.sleep(0.05)
        assert gone(pid)
