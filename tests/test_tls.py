"""Mutual TLS (``--ssl CERT KEY PEER``) on all four ports of a real master, with
certificates the tests generate (``tls_certs``): a trusted client works on every
channel; untrusted, expired, certificate-less and plain-TCP peers get nothing past the
handshake and are logged; the master keeps serving."""

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import sys

import pytest

pytest.importorskip("cryptography")

from labpipe.protocol import tls
from labpipe.protocol.broadcast import Receiver
from labpipe.protocol.logs import LogForwarder
from labpipe.protocol.rpc import AsyncClient, Client
from labpipe.protocol.sync import Subscriber
from conftest import running_master, wait_until
from tls_certs import make_certs, openssl_identity

HOST = "127.0.0.1"

EXPERIMENT = """
class Hello(EnvExperiment):
    def run(self):
        self.set_dataset("tls.hello", 42, broadcast=True, persist=True)
"""

BANNERS = {"control": b"ARTIQ pc_rpc\n", "notify": b"ARTIQ sync_struct\nschedule\n",
           "broadcast": b"ARTIQ broadcast\nlog\n", "logging": b"ARTIQ logging\n"}


@pytest.fixture
def certs(tmp_path):
    return make_certs(str(tmp_path / "certs"))


def no_cert_context(certs):
    """A client that trusts the server but presents no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(certs.server.cert)
    return context


def received_after_banner(port, banner, context):
    """Connect (TLS with context, plain TCP without), send banner; the bytes the
    server sends back before closing (b"" when refused)."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        sock = raw
        try:
            if context is not None:
                sock = context.wrap_socket(raw)
            sock.sendall(banner)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
                if b"\n" in data:
                    break
            return data
        except (ssl.SSLError, ConnectionError):
            return b""
        finally:
            if sock is not raw:
                sock.close()


# --- the contexts ---------------------------------------------------------------------


def test_bad_files_give_one_line_naming_the_file(certs, tmp_path):
    good = certs.server_files()
    missing = str(tmp_path / "nope.pem")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [
        (tls.TLSFiles(missing, good.key, good.peer), "CERT", "No such file"),
        (tls.TLSFiles(good.cert, str(text), good.peer), "KEY", "not a private key"),
        (tls.TLSFiles(good.cert, good.key, str(text)), "PEER", "not a certificate"),
        (tls.TLSFiles(good.cert, certs.client.key, good.peer), "does not belong", ""),
        (tls.TLSFiles(good.key, good.key, good.peer), "CERT", "not a certificate"),
    ]
    for files, first, second in cases:
        for make in (tls.server_context, tls.client_context):
            with pytest.raises(tls.TLSConfigError) as info:
                make(files)
            message = str(info.value)
            assert "\n" not in message and first in message and second in message, message


def test_an_encrypted_key_is_refused_without_a_prompt(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization
    with open(certs.client.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(tls.TLSConfigError, match="is encrypted"):
        tls.client_context(tls.TLSFiles(certs.client.cert, str(encrypted),
                                        certs.server.cert))


# --- a master with every port in TLS --------------------------------------------------


async def test_trusted_client_on_all_four_ports_refused_peers_logged(lab, certs, caplog):
    async def main():
        lab.experiment("hello", EXPERIMENT)
        trusted = tls.client_context(certs.client_files())
        caplog.set_level(logging.WARNING, logger="labpipe.protocol.tls")
        async with running_master(lab, tls=certs.server_files()) as master:
            ports = {name: master.port(name) for name in BANNERS}

            # notify: a Subscriber gets the init, then the mods of a submission
            mods = []
            schedule = Subscriber("schedule", dict, mods.append)
            await schedule.connect(HOST, ports["notify"], ssl=trusted)
            # broadcast: log messages arrive
            logs = []
            receiver = Receiver("log", logs.append)
            await receiver.connect(HOST, ports["broadcast"], ssl=trusted)
            try:
                await wait_until(lambda: mods and mods[0]["action"] == "init")
                await wait_until(lambda: master.broadcaster.receiver_count("log") == 1)

                # control: submit over RPC
                rpc = AsyncClient()
                await rpc.connect_rpc(HOST, ports["control"], "schedule", ssl=trusted)
                try:
                    rid = await rpc.submit("main", {"file": "repository/hello.py", "class_name": "Hello",
                                                    "arguments": {}, "log_level": 30})
                finally:
                    rpc.close_rpc()
                await wait_until(lambda: rid in (schedule.target or {}))
                await wait_until(lambda: any(m["action"] == "delitem" and m["key"] == rid
                                             for m in mods), timeout=60)
                assert master.dataset_db.data.raw_view["tls.hello"][1] == 42

                logging.getLogger("labpipe.test_tls").warning("over the broadcast port")
                await wait_until(lambda: any("over the broadcast port" in m[3] for m in logs))

                # logging port: a LogForwarder's record arrives (in the log broadcast)
                forwarder = LogForwarder(HOST, ports["logging"], "tls_forwarder", ssl=trusted)
                # not registered: the server re-emits on the registered logger of
                # that name, which propagates to the master's broadcast handler
                remote = logging.Logger("labpipe.test_tls.remote")
                remote.addHandler(forwarder)
                try:
                    remote.warning("through the logging port")
                    await wait_until(lambda: any(
                        m[1] == "tls_forwarder" and "through the logging port" in m[3]
                        for m in logs))
                    assert forwarder.dropped == 0
                finally:
                    remote.removeHandler(forwarder)
                    forwarder.close()

                # refused: untrusted, expired, no certificate, plain TCP, on every port
                caplog.clear()
                refused = {"untrusted": tls.client_context(certs.client_files("untrusted")),
                           "expired": tls.client_context(certs.client_files("expired")),
                           "no certificate": no_cert_context(certs),
                           "plain TCP": None}
                for name, port in ports.items():
                    for who, context in refused.items():
                        got = await asyncio.to_thread(received_after_banner, port,
                                                      BANNERS[name], context)
                        assert got == b"", (name, who, got)
                await wait_until(lambda: len(refusal_lines(caplog)) == 16)
                lines = refusal_lines(caplog)
                for reason, count in (("self-signed certificate", 4),
                                      ("certificate has expired", 4),
                                      ("no client certificate", 4), ("not TLS", 4)):
                    assert sum(reason in line for line in lines) == count, (reason, lines)
                # the blocking RPC client is refused too, with an exception
                with pytest.raises(Exception):
                    await asyncio.to_thread(
                        Client, HOST, ports["control"], "schedule", 10,
                        ssl=tls.client_context(certs.client_files("untrusted")))

                # after all that, the trusted client is still served on every port
                def get_status():
                    with Client(HOST, ports["control"], "schedule", 10, ssl=trusted) as c:
                        return c.get_status()
                status = await asyncio.to_thread(get_status)
                assert isinstance(status, dict)
                for name in ("control", "notify"):
                    got = await asyncio.to_thread(received_after_banner, ports[name],
                                                  BANNERS[name], trusted)
                    assert got.endswith(b"\n"), (name, got)
                later = []
                receiver2 = Receiver("log", later.append)
                await receiver2.connect(HOST, ports["broadcast"], ssl=trusted)
                forwarder = LogForwarder(HOST, ports["logging"], "tls_again", ssl=trusted)
                remote.addHandler(forwarder)
                try:
                    await wait_until(lambda: master.broadcaster.receiver_count("log") == 2)
                    remote.warning("still forwarding")
                    await wait_until(lambda: any(
                        m[1] == "tls_again" and "still forwarding" in m[3] for m in later))
                finally:
                    remote.removeHandler(forwarder)
                    forwarder.close()
                    await receiver2.close()
            finally:
                await schedule.close()
                await receiver.close()
    await main()


def refusal_lines(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "labpipe.protocol.tls" and "refused TLS" in r.getMessage()]


async def test_a_client_refuses_a_server_it_does_not_trust(lab, certs):
    async def main():
        wrong_peer = tls.client_context(tls.TLSFiles(certs.client.cert, certs.client.key,
                                                     certs.untrusted.cert))
        async with running_master(lab, tls=certs.server_files()) as master:
            with pytest.raises(ssl.SSLCertVerificationError):
                await AsyncClient().connect_rpc(HOST, master.port("control"), "schedule",
                                                ssl=wrong_peer)
            with pytest.raises(ssl.SSLCertVerificationError):
                await Subscriber("schedule", dict).connect(HOST, master.port("notify"),
                                                           ssl=wrong_peer)
    await main()


async def test_a_flood_of_refusals_is_rate_limited_and_counted(certs, caplog, monkeypatch):
    from labpipe.protocol.rpc import Server
    monkeypatch.setattr(tls, "MAX_REFUSAL_LINES", 3)
    monkeypatch.setattr(tls, "REFUSAL_WINDOW", 600.0)  # the whole flood in one window
    caplog.set_level(logging.WARNING, logger="labpipe.protocol.tls")

    async def main():
        server = Server({"t": object()})
        await server.start(HOST, 0, ssl=tls.server_context(certs.server_files()))
        try:
            for _ in range(12):
                assert await asyncio.to_thread(received_after_banner, server.port,
                                               BANNERS["control"], None) == b""
            await wait_until(lambda: server._connections == set())
            # still serving a trusted client
            got = await asyncio.to_thread(received_after_banner, server.port,
                                          BANNERS["control"],
                                          tls.client_context(certs.client_files()))
            assert b'"targets"' in got
        finally:
            await server.stop()   # logs the count not yet logged
    await main()
    messages = [r.getMessage() for r in caplog.records if r.name == "labpipe.protocol.tls"]
    singles = [m for m in messages if "refused TLS connection" in m]
    summaries = [m for m in messages if "more TLS connections refused" in m]
    assert len(singles) == 3 and all("not TLS" in m for m in singles), messages
    assert len(summaries) == 1 and ": 9 more TLS connections refused" in summaries[0]


# --- real processes -------------------------------------------------------------------


def _master_command(*extra):
    return [sys.executable, "-m", "labpipe.master", "--bind", HOST, "--port-control", "0",
            "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0", *extra]


def test_master_refuses_to_start_with_bad_tls_files(lab, certs):
    result = subprocess.run(
        _master_command("--ssl", certs.server.cert, certs.client.key, certs.trusted_clients),
        cwd=lab.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not belong" in lines[0], result.stderr


def test_labpipe_client_submit_and_show_schedule_over_tls(lab, certs):
    from conftest import MasterProcess
    lab.experiment("hello", EXPERIMENT)
    master = MasterProcess(lab.root, "--ssl", certs.server.cert, certs.server.key,
                           certs.trusted_clients)
    try:
        ssl_args = ["--ssl", certs.client.cert, certs.client.key, certs.server.cert]
        result = master.cli(*ssl_args, "submit", "-c", "Hello", "repository/hello.py")
        rid = int(result.stdout.split("RID: ")[1])
        assert rid >= 0
        shown = master.cli(*ssl_args, "--json", "show", "schedule")
        assert shown.returncode == 0 and shown.stdout.strip().startswith("{")
        master.cli(*ssl_args, "wait", str(rid))
        # the notify port through labpipe-client (show datasets reads the notifier)
        datasets = master.cli(*ssl_args, "--json", "show", "datasets")
        assert "tls.hello" in datasets.stdout and "42" in datasets.stdout

        # without --ssl, or with a certificate the master does not trust: exit 4, one line
        for args in ([], ["--ssl", certs.untrusted.cert, certs.untrusted.key,
                          certs.server.cert]):
            for command in (["submit", "-c", "Hello", "repository/hello.py"],
                            ["show", "schedule"], ["show", "datasets"]):
                result = master.cli(*args, *command, check=False)
                assert result.returncode == 4, (args, command, result.stderr)
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and ("--ssl" in lines[0] or "TLS" in lines[0]), lines
        # bad files: usage error, one line
        result = master.cli("--ssl", certs.client.cert, certs.server.key,
                            certs.server.cert, "show", "schedule", check=False)
        assert result.returncode == 2 and "does not belong" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        # the master kept serving
        result = master.cli(*ssl_args, "show", "schedule")
        assert result.returncode == 0
    finally:
        master.stop()


async def test_git_push_rescans_through_the_hook_over_tls(lab, certs):
    async def main():
        from test_repository_push import git, push
        from conftest import write_file
        bare = lab.path("repository")
        await asyncio.to_thread(git, lab.root, "init", "-q", "--bare", bare)
        async with running_master(lab, git=True, tls=certs.server_files()) as master:
            with open(master.experiment_db.hook.path) as f:
                assert f"--ssl {certs.server.cert} {certs.server.key} {certs.server.cert}" \
                    in f.read()
            clone = lab.path("clone")
            await asyncio.to_thread(git, lab.root, "clone", "-q", bare, clone)
            write_file(clone, "hello.py", "from labpipe.experiment import *\n" + EXPERIMENT)
            rev, output = await push(clone, "hello over TLS")
            assert "is rescanning its experiments" in output, output
            status = master.experiment_db.explist_status
            await wait_until(lambda: status.raw_view["cur_rev"] == rev, timeout=60)
            assert "Hello" in master.experiment_db.explist.raw_view
    await main()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_certificates_made_as_artiqs_manual_says(tmp_path):
    """``openssl req -x509 -newkey rsa -keyout N.key -nodes -out N.pem -sha256 -subj /``"""
    from labpipe.protocol.rpc import Server
    master = openssl_identity(str(tmp_path), "master")
    client_id = openssl_identity(str(tmp_path), "client")
    server_files = tls.TLSFiles(master.cert, master.key, client_id.cert)
    client_files = tls.TLSFiles(client_id.cert, client_id.key, master.cert)

    class Adder:
        def add(self, a, b):
            return a + b

    async def main():
        server = Server({"adder": Adder()})
        await server.start(HOST, 0, ssl=tls.server_context(server_files))
        try:
            def call():
                with Client(HOST, server.port, "adder", 10,
                            ssl=tls.client_context(client_files)) as client:
                    return client.add(2, 3)
            assert await asyncio.to_thread(call) == 5
        finally:
            await server.stop()
    await main()
