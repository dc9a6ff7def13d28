"""labpipe-web's own JSON/WebSocket API, against a real master: the notifier copies
it sends, RPC through it, bad input from the browser side, the lock's refusal passed
on, reconnection, --ssl (TLS to the master, HTTPS), and a browser that never reads
dropped at the backlog's bound."""

import asyncio
import json
import socket
import ssl

import aiohttp
import pytest

from conftest import (MasterProcess, descendants, expid, free_ports, process_alive,
                      wait_for, wait_until)
from web_fixtures import WebProcess, master, web, web_lab  # noqa: F401  (fixtures)

pytest.importorskip("aiohttp")


class Page:
    """One browser's WebSocket: the notifier copies and the replies."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.messages: list[dict] = []
        self.inits: dict[str, object] = {}
        self.next_id = 1
        #: how many messages had come when the last rpc() was sent: what it caused
        #: may come before its reply (``until(..., since=page.sent_at)``)
        self.sent_at = 0

    async def receive(self) -> dict:
        msg = json.loads((await self.ws.receive(timeout=20)).data)
        self.messages.append(msg)
        if msg.get("type") == "init":
            self.inits[msg["notifier"]] = msg["struct"]
        return msg

    async def until(self, predicate, timeout: float = 20, since: int | None = None) -> dict:
        """The first message matching predicate: among those received from index
        since on (if given), else the next ones to come."""
        if since is not None:
            for msg in self.messages[since:]:
                if predicate(msg):
                    return msg

        async def wait() -> dict:
            while True:
                msg = await self.receive()
                if predicate(msg):
                    return msg
        return await asyncio.wait_for(wait(), timeout)

    async def rpc(self, target, method, *args, **kwargs) -> dict:
        rid = self.next_id
        self.next_id += 1
        self.sent_at = len(self.messages)
        await self.ws.send_str(json.dumps({"type": "rpc", "id": rid, "target": target,
                                           "method": method, "args": list(args),
                                           "kwargs": kwargs}))
        return await self.until(lambda m: m.get("type") == "reply" and m.get("id") == rid)


async def open_page(session, web) -> Page:
    page = Page(await session.ws_connect(web.url + "ws"))
    # "connected" comes after every notifier's init
    await page.until(lambda m: m.get("type") == "connection" and m["connected"])
    return page


async def test_page_and_static_files_are_served(web):
    async with aiohttp.ClientSession() as s:
        async with s.get(web.url) as r:
            assert r.status == 200 and "labpipe" in await r.text()
        async with s.get(web.url + "static/app.js") as r:
            assert r.status == 200 and "WebSocket" in await r.text()


async def test_notifiers_and_rpc_through_the_websocket(web, master):
    async with aiohttp.ClientSession() as s:
        page = await open_page(s, web)
        assert "scanner.py" in json.dumps(page.inits["explist"])
        expid = {"file": "scanner.py", "class_name": "Scanner", "log_level": 30, "repo_rev": None,
                 "arguments": {"freqs": {"ty": "ExplicitScan", "sequence": [1e6, 2e6]},
                               "amplitude": 0.25}}
        ok = await page.rpc("schedule", "validate", "main", expid)
        assert ok["ok"] and ok["result"] == []
        reply = await page.rpc("schedule", "submit", "main", expid, 0, None, False)
        assert reply["ok"], reply
        rid = reply["result"]
        ended = await page.until(lambda m: m.get("notifier") == "history"
                                 and m["type"] == "mod" and m["mod"].get("key") == rid,
                                 since=page.sent_at)
        assert ended["mod"]["value"]["status"] == "completed", ended
        results = await page.rpc("history", "read_results", rid)
        assert results["ok"], results
        assert results["result"]["datasets"]["scan.y"] == [0.0, 0.25]


async def test_bad_input_gets_one_clear_error_and_the_server_lives(web):
    async with aiohttp.ClientSession() as s:
        page = await open_page(s, web)
        await page.ws.send_str("{not json")
        assert "not JSON" in (await page.until(lambda m: m["type"] == "error"))["error"]
        await page.ws.send_str(json.dumps([1, 2]))
        assert "expected" in (await page.until(lambda m: m["type"] == "error"))["error"]
        await page.ws.send_bytes(b"\x00\x01")
        assert "text" in (await page.until(lambda m: m["type"] == "error"))["error"]
        r = await page.rpc("nonexistent", "x")
        assert not r["ok"] and "unknown target 'nonexistent'" in r["error"]
        r = await page.rpc("schedule", "_private")
        assert not r["ok"] and "names" in r["error"]
        r = await page.rpc("schedule", "submit", "main", {"file": 3})
        assert not r["ok"] and "\n" not in r["error"] and r["error"]
        r = await page.rpc("schedule", "delete", "not a rid")
        assert not r["ok"] and r["error"]
        r = await page.rpc("history", "read_results", 999999)
        assert not r["ok"] and r["error"]
        r = await page.rpc("schedule", "get_status")
        assert r["ok"]
        # a message over the size limit closes that connection only
        await page.ws.send_str("x" * (2 << 20))
        msg = await page.ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING)
        again = await open_page(s, web)
        assert (await again.rpc("schedule", "get_status"))["ok"]


async def test_reconnects_after_a_master_restart(web_lab):  # noqa: F811
    m = MasterProcess(web_lab.root)
    w = WebProcess(m)
    try:
        async with aiohttp.ClientSession() as s:
            page = await open_page(s, w)
            ports = m.ports
            m.stop()
            await page.until(lambda msg: msg.get("type") == "connection"
                             and not msg["connected"])
            extra = [f"--port-{n}={ports[n]}" for n in ("control", "notify", "broadcast")]
            m = MasterProcess(web_lab.root, *extra)
            await page.until(lambda msg: msg.get("type") == "connection" and msg["connected"],
                             timeout=30)
            assert (await page.rpc("schedule", "get_status"))["ok"]
    finally:
        w.stop()
        m.stop()


def test_the_masters_web_process_dies_with_a_killed_master(web_lab):
    """labpipe-master --web: the dashboard's process never outlives the master, not
    even a kill -9 of it."""
    m = MasterProcess(web_lab.root, "--web", str(free_ports(1)[0]))
    try:
        def web_pids():
            return [pid for pid in descendants(m.process.pid)
                    if "labpipe-web" in _cmdline(pid)]
        wait_for(lambda: web_pids())
        (pid,) = web_pids()
        m.process.kill()
        m.process.wait()
        wait_for(lambda: not process_alive(pid), timeout=10)
    finally:
        m.stop()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


async def test_ssl_is_tls_to_the_master_and_https_to_the_browser(web_lab, tmp_path):  # noqa: F811
    """--ssl CERT KEY PEER: mutual TLS to a TLS master (docs/tls.md) and HTTPS with the
    same certificate; a web server whose certificate the master does not trust gets
    nothing from it and says it is not connected."""
    from tls_certs import make_certs
    certs = make_certs(str(tmp_path / "certs"))
    m = MasterProcess(web_lab.root, "--ssl", certs.server.cert, certs.server.key,
                      certs.trusted_clients, "--name", "tls lab")
    trusted, untrusted = certs.client_files(), certs.client_files("untrusted")
    w = WebProcess(m, "--ssl", trusted.cert, trusted.key, trusted.peer)
    refused = WebProcess(m, "--ssl", untrusted.cert, untrusted.key, untrusted.peer)
    try:
        assert w.url.startswith("https://")
        https = ssl.create_default_context(cafile=trusted.cert)
        https.check_hostname = False  # the test certificate names no host
        async with aiohttp.ClientSession() as s:
            async with s.get(w.url, ssl=https) as r:
                assert r.status == 200 and "app.js" in await r.text()
            with pytest.raises(aiohttp.ClientError):
                async with s.get(w.url.replace("https://", "http://", 1)) as r:
                    await r.text()
            page = Page(await s.ws_connect(w.url + "ws", ssl=https))
            up = await page.until(lambda m: m.get("type") == "connection" and m["connected"])
            assert up["name"] == "tls lab"
            assert "scanner.py" in json.dumps(page.inits["explist"])
            reply = await page.rpc("schedule", "submit", "main", expid("repository/scanner.py"),
                                   0, None, False)
            assert reply["ok"], reply
            ended = await page.until(lambda m: m.get("notifier") == "history"
                                     and m["type"] == "mod"
                                     and m["mod"].get("key") == reply["result"])
            assert ended["mod"]["value"]["status"] == "completed"
            other = Page(await s.ws_connect(refused.url + "ws", ssl=_trusting(untrusted.cert)))
            first = await other.until(lambda m: m.get("type") == "connection")
            assert not first["connected"]
            # a few of its reconnection attempts: never connected, no copy of anything
            with pytest.raises(asyncio.TimeoutError):
                await other.until(lambda m: m.get("type") != "connection"
                                  or m["connected"], timeout=2)
            assert not other.inits
            r = await other.rpc("schedule", "get_status")
            assert not r["ok"] and r["error"]
    finally:
        refused.stop()
        w.stop()
        m.stop()


def _trusting(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    return context


async def test_the_locks_refusal_is_the_masters_one_line_not_unreachable(web):
    """A PermissionError of the lock is an OSError too: it is passed on as the master's
    refusal, and the connection to the master is kept."""
    async with aiohttp.ClientSession() as s:
        page = await open_page(s, web)
        assert (await page.rpc("lock", "lock", "k3y", note="tests"))["ok"]
        await page.until(lambda m: m.get("notifier") == "lock" and m["type"] == "mod",
                         since=page.sent_at)
        refused = await page.rpc("schedule", "hold", "main")
        assert not refused["ok"]
        assert "locked" in refused["error"] and "tests" in refused["error"], refused
        assert "not reachable" not in refused["error"] and "\n" not in refused["error"]
        assert (await page.rpc("schedule", "hold", "main", lock_key="k3y"))["ok"]
        assert (await page.rpc("schedule", "release", "main", lock_key="k3y"))["ok"]
        assert (await page.rpc("lock", "unlock", "k3y"))["ok"]


async def test_a_browser_that_does_not_read_is_dropped_at_the_bound(master):  # noqa: F811
    """A WebSocket whose reader never reads, while a run-sized array is set again and
    again: the web server drops it once its outbox passes the bound (memory bounded),
    and the other browser and the server go on."""
    from labpipe.web.bridge import MasterAddress
    from labpipe.web.server import WebServer
    server = WebServer(MasterAddress("127.0.0.1", master.ports["control"],
                                     master.ports["notify"], master.ports["broadcast"]),
                       max_backlog=200_000)
    await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/"
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    writer = None
    try:
        await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=slow, limit=4096)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert b"101" in await reader.readuntil(b"\r\n")
        async with aiohttp.ClientSession() as s:
            page = await open_page(s, type("W", (), {"url": url}))
            big = [float(i) for i in range(20_000)]  # about 150 kB of JSON
            for i in range(40):
                big[0] = float(i)
                assert (await page.rpc("dataset_db", "set", "big", big))["ok"]
                seen = await page.until(lambda m: m.get("type") == "mod"
                                        and m["mod"].get("key") == "big",
                                        since=page.sent_at)
                assert seen["mod"]["value"][1][0] == i
                if server.dropped:
                    break
            await wait_until(lambda: server.dropped == 1, timeout=10)
            await wait_until(lambda: len(server._sockets) == 1, timeout=10)
            assert (await page.rpc("schedule", "get_status"))["ok"]
    finally:
        if writer is not None:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
        else:
            slow.close()
        await server.stop()
