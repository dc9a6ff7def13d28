"""The lock and the permissions over the wire, against real labpipe-master processes
(docs/access.md)."""

import os
import signal

import pytest

from conftest import MasterProcess, expid

HELLO = "from labpipe.experiment import *\nclass Hello(EnvExperiment):\n    def run(self):\n        pass\n"


def _lab(tmp_path, toml=""):
    (tmp_path / "repository").mkdir(parents=True)
    (tmp_path / "repository" / "hello.py").write_text(HELLO)
    (tmp_path / "repository" / "danger").mkdir()
    (tmp_path / "repository" / "danger" / "fire.py").write_text(HELLO)
    (tmp_path / "device_db.py").write_text(
        'device_db = {"motor": {"type": "local", "module": "ophyd.sim", "class": "SynAxis"},'
        ' "laser": {"type": "local", "module": "ophyd.sim", "class": "SynAxis"}}\n')
    (tmp_path / "labpipe.toml").write_text(toml)
    return tmp_path


def _read(path):
    with open(path) as f:
        return f.read()


def test_lock_refuses_without_key_and_survives_kill(tmp_path):
    lab = _lab(tmp_path, '[lock]\nemergency_key = "sos"\n[master]\nhold = ["main"]\n')
    master = MasterProcess(str(lab))
    try:
        with master.client("lock") as lock:
            info = lock.lock("k1", note="calibration", user="alice")
            assert info["locked"] and info["user"] == "alice"
        with master.client("schedule") as schedule:
            with pytest.raises(PermissionError) as refused:
                schedule.submit("main", expid("repository/hello.py"))
            message = str(refused.value)
            assert "alice" in message and "calibration" in message and "\n" not in message
            rid = schedule.submit("main", expid("repository/hello.py"), lock_key="k1")
            assert rid in schedule.get_status()  # reads need no key
            with pytest.raises(PermissionError):
                schedule.delete(rid, lock_key="wrong")
        with master.client("dataset_db") as datasets:
            with pytest.raises(PermissionError):
                datasets.set("x", 1)
        master.process.send_signal(signal.SIGKILL)
        master.process.wait()
    finally:
        master.stop()
    master = MasterProcess(str(lab))
    try:
        with master.client("lock") as lock:
            assert lock.info()["locked"]
            with pytest.raises(PermissionError):
                lock.unlock("nope")
            assert not lock.unlock("sos")["locked"]  # the emergency key
        with master.client("schedule") as schedule:
            schedule.submit("main", expid("repository/hello.py"))
    finally:
        master.stop()


PERMISSIONS = """
[permissions]
enabled = true
default_group = "observers"
[permissions.users]
carol = "operators"
[permissions.groups.observers]
[permissions.groups.operators]
edit_queue = true
forbidden_experiments = ["repository/danger/*"]
forbidden_devices = ["laser"]
[master]
hold = ["main"]
"""


def test_permissions_refuse_by_rule(tmp_path):
    master = MasterProcess(str(_lab(tmp_path, PERMISSIONS)))
    try:
        with master.client("schedule") as schedule:
            with pytest.raises(PermissionError, match="edit_queue"):
                schedule.submit("main", expid("repository/hello.py"))
            rid = schedule.submit("main", expid("repository/hello.py"), user="carol")
            with pytest.raises(PermissionError, match="forbidden_experiments"):
                schedule.submit("main", expid("repository/danger/fire.py"), user="carol")
            with pytest.raises(PermissionError, match="forbidden_devices 'laser'"):
                schedule.submit("main", {**expid("repository/hello.py"),
                                         "devarg_override": {"laser": {}}}, user="carol")
            with pytest.raises(PermissionError, match="submit_content"):
                schedule.submit("main", expid(content=HELLO), group="operators")
            schedule.delete(rid, group="operators")
        with master.client("master_management") as management:
            with pytest.raises(PermissionError, match="terminate"):
                management.terminate(group="operators")
        with master.client("permissions") as permissions:
            allowed = permissions.allowed("operators")
            assert allowed["devices"] == ["motor"] and allowed["rights"]["edit_queue"]
    finally:
        master.stop()
    assert os.path.exists(tmp_path / "labpipe.toml")


def test_client_lock_commands_and_key(tmp_path):
    master = MasterProcess(str(_lab(tmp_path, '[master]\nhold = ["main"]\n')))
    try:
        out = master.cli("--user", "dora", "lock", "k9", "--note", "alignment").stdout
        assert "Locked" in out and "dora" in out and "alignment" in out
        assert "alignment" in master.cli("lock-info").stdout
        refused = master.cli("submit", "repository/hello.py", check=False)
        assert refused.returncode == 3 and "dora" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        rid = int(master.cli("--lock-key", "k9", "--user", "erin", "submit", "repository/hello.py").stdout.split("RID: ")[1])
        with master.client("schedule") as schedule:
            assert rid in schedule.get_status()
        assert "Not locked" in master.cli("unlock", "k9").stdout
    finally:
        master.stop()


def test_tls_group_comes_from_the_certificate(tmp_path):
    from labpipe.protocol.rpc import Client
    from labpipe.protocol.tls import client_context
    from tls_certs import group_identity, make_certs
    certs = make_certs(str(tmp_path / "certs"))
    operator = group_identity(str(tmp_path / "certs"), "op", "operators")
    observer = group_identity(str(tmp_path / "certs"), "obs", "observers")
    peers = tmp_path / "certs" / "peers.pem"
    peers.write_text("".join(_read(i.cert)
                             for i in (operator, observer)))
    lab = _lab(tmp_path / "lab", PERMISSIONS.replace("default_group = \"observers\"\n", ""))
    master = MasterProcess(str(lab), "--ssl", certs.server.cert, certs.server.key, str(peers))

    def client(identity, target):
        from labpipe.protocol.tls import TLSFiles
        return Client("127.0.0.1", master.ports["control"], target, timeout=20,
                      ssl=client_context(TLSFiles(identity.cert, identity.key,
                                                  certs.server.cert)))
    try:
        with client(operator, "schedule") as schedule:
            rid = schedule.submit("main", expid("repository/hello.py"))
            with pytest.raises(PermissionError, match="forbidden_experiments"):
                schedule.submit("main", expid("repository/danger/fire.py"))
            with pytest.raises(PermissionError, match="submit_content"):
                schedule.submit("main", expid(content=HELLO))
        with client(observer, "schedule") as schedule:
            with pytest.raises(PermissionError, match="observers"):
                schedule.delete(rid)
            # the client's word does not change its certificate's group
            with pytest.raises(PermissionError, match="certificate"):
                schedule.delete(rid, group="operators")
        with client(operator, "master_management") as management:
            with pytest.raises(PermissionError, match="terminate"):
                management.terminate()
        with client(operator, "history") as history, client(operator, "schedule") as s:
            s.delete(rid)
            record = history.wait(rid, 20)
            assert record["user"] == "labpipe test op" and record["group"] == "operators"
    finally:
        master.stop()


PLAN_PERMISSIONS = """
[permissions]
enabled = true
default_group = "operators"
[permissions.groups.operators]
edit_queue = true
forbidden_plans = ["scan"]
forbidden_devices = ["laser"]
"""


def test_permissions_refuse_a_forbidden_plan_and_a_forbidden_device_in_a_plan(tmp_path):
    lab = _lab(tmp_path, PLAN_PERMISSIONS)
    plans = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "repository", "plans.py")
    (lab / "repository" / "plans.py").write_text(_read(plans))
    master = MasterProcess(str(lab))
    try:
        with master.client("schedule") as schedule:
            schedule.hold("main")
            with pytest.raises(PermissionError, match="forbidden_plans 'scan'"):
                schedule.submit_plan("main", "scan", [["motor"], "motor", -1, 1, 3])
            with pytest.raises(PermissionError, match="forbidden_devices 'laser'"):
                schedule.submit_plan("main", "count", [["laser"]])
            rid = schedule.submit_plan("main", "count", [["motor"]])
            assert schedule.get_status()[rid]["status"] == "pending"
        with master.client("permissions") as permissions:
            allowed = permissions.allowed("operators")
            assert "scan" not in allowed["plans"] and "count" in allowed["plans"]
            assert allowed["devices"] == ["motor"]
    finally:
        master.stop()
