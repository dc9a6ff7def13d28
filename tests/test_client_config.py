"""One place for the connection: ``labpipe.toml`` in the lab directory (or a folder
above), ``~/.config/labpipe/client.toml`` and ``LABPIPE_*`` variables give
``labpipe-client`` the server, ports and TLS files; the master reads its ports, bind
addresses, TLS files and held pipelines from the same ``labpipe.toml``. Flags win over
variables, variables over files, the lab's file over the user's."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import free_ports
from labpipe.client.main import get_argparser as client_argparser
from labpipe.client.settings import SettingsError, resolve
from labpipe.config import ConfigError, config_from_dict
from labpipe.master.main import get_argparser as master_argparser
from labpipe.master.settings import parse_args as master_args
from tls_certs import make_certs

GATED = """
import os, time
from labpipe.experiment import *

class Gated(EnvExperiment):
    def build(self):
        self.setattr_argument("gate", StringValue(""))

    def run(self):
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
"""


class ConfiguredMaster:
    """labpipe-master started in lab_dir with only the given flags (the rest from its
    labpipe.toml)."""

    def __init__(self, lab_dir, *flags):
        self.process = subprocess.Popen([sys.executable, "-m", "labpipe.master", *flags],
                                        cwd=lab_dir, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.ready = self.process.stdout.readline()
        if "ready" not in self.ready:
            self.process.kill()
            raise AssertionError(f"master did not start: {self.ready!r} "
                                 f"{self.process.stderr.read()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process.stdout.close()
        self.process.stderr.close()


def client(cwd, *args, env=None, home=None):
    """labpipe-client run in cwd with no connection flags unless args give them; the
    user's configuration folder is home (an empty folder by default)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LABPIPE_")}
    environ["XDG_CONFIG_HOME"] = str(home or os.path.join(cwd, ".no-user-config"))
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "labpipe.client.main", *args], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=60)


@pytest.fixture
def configured_lab(lab):
    control, notify, broadcast, logging = free_ports(4)
    lab.experiment("gated", GATED)
    lab.write("labpipe.toml", f"""
        [ports]
        control = {control}
        notify = {notify}
        broadcast = {broadcast}
        logging = {logging}

        [master]
        bind = ["127.0.0.1"]
        hold = ["calib"]
    """)
    lab.ports = {"control": control, "notify": notify, "broadcast": broadcast,
                 "logging": logging}
    return lab


def test_master_and_client_take_the_lab_file(configured_lab, tmp_path_factory):
    lab = configured_lab
    master = ConfiguredMaster(lab.root)
    try:
        ports = lab.ports
        assert master.ready.strip() == (
            f"labpipe-master ready on 127.0.0.1: control {ports['control']}, notify "
            f"{ports['notify']}, broadcast {ports['broadcast']}, logging {ports['logging']}")
        # the client in the lab directory, and in a folder below it: no flags needed
        rid = json.loads(client(lab.root, "--json", "submit", "-p", "calib",
                                "repository/gated.py").stdout)["rid"]
        shown = client(lab.path("repository"), "show", "schedule").stdout
        assert shown.splitlines()[0] == "Held pipelines: calib"  # held at start
        assert shown.splitlines()[2].split()[:5] == [str(rid), "calib", "1", "pending",
                                                     "(held)"]  # first in its queue
        # a variable wins over the file, a flag over the variable
        wrong = str(free_ports(1)[0])
        result = client(lab.root, "show", "schedule", env={"LABPIPE_PORT_CONTROL": wrong})
        assert result.returncode == 4 and wrong in result.stderr
        result = client(lab.root, "--port", str(ports["control"]), "show", "schedule",
                        env={"LABPIPE_PORT_CONTROL": wrong})
        assert result.returncode == 0 and str(rid) in result.stdout
        bad = client(lab.root, "show", "schedule", env={"LABPIPE_PORT_NOTIFY": "many"})
        assert bad.returncode == 2
        assert bad.stderr.strip() == ("labpipe-client: LABPIPE_PORT_NOTIFY: expected a "
                                      "port number from 1 to 65535, not 'many'")
        # elsewhere: the user's client.toml, or the variables
        elsewhere = tmp_path_factory.mktemp("elsewhere")  # not below the lab
        (elsewhere / "labpipe").mkdir(parents=True)
        assert client(str(elsewhere), "show", "schedule").returncode == 4  # defaults
        (elsewhere / "labpipe" / "client.toml").write_text(
            "[client]\nserver = '127.0.0.1'\n[ports]\n"
            f"control = {ports['control']}\nnotify = {ports['notify']}\n")
        result = client(str(elsewhere), "--json", "show", "schedule", home=elsewhere)
        assert result.returncode == 0 and str(rid) in json.loads(result.stdout)
        env = {f"LABPIPE_PORT_{name.upper()}": str(ports[name])
               for name in ("control", "notify", "broadcast")}
        env["LABPIPE_SERVER"] = "127.0.0.1"
        result = client(str(elsewhere), "--json", "show", "schedule", env=env)
        assert result.returncode == 0 and str(rid) in json.loads(result.stdout)
        (elsewhere / "labpipe" / "client.toml").write_text("[master]\nhold = ['x']\n")
        result = client(str(elsewhere), "show", "schedule", home=elsewhere)
        assert result.returncode == 2 and "unknown section [master]" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        client(lab.root, "delete", str(rid))
    finally:
        master.stop()


def test_held_at_start_before_the_restored_schedule_runs(configured_lab):
    lab = configured_lab
    gate = lab.path("gate")
    master = ConfiguredMaster(lab.root)
    try:
        assert client(lab.root, "release", "calib").returncode == 0
        first, prepared, second = (json.loads(client(
            lab.root, "--json", "submit", "-p", "calib", "repository/gated.py",
            f"gate={gate}").stdout)["rid"] for _ in range(3))
        schedule = json.loads(client(lab.root, "--json", "show", "schedule").stdout)
        # the first runs, the next one prepares while it does, the last waits
        assert schedule[str(second)]["status"] == "pending"
    finally:
        master.stop()
    # released when the master stopped; labpipe.toml holds it again at start, before
    # the restored pending run could start
    master = ConfiguredMaster(lab.root)
    try:
        schedule = json.loads(client(lab.root, "--json", "show", "schedule").stdout)
        assert str(first) not in schedule and str(prepared) not in schedule  # interrupted
        assert schedule[str(second)]["status"] == "pending"
        assert "Held pipelines: calib" in client(lab.root, "show", "schedule").stdout
        with open(gate, "w"):
            pass
        client(lab.root, "release", "calib")
        waited = json.loads(client(lab.root, "--json", "wait", str(second)).stdout)
        assert waited["status"] == "completed"
    finally:
        master.stop()


def test_tls_files_from_the_lab_file(lab):
    certs = make_certs(lab.path("certs"))
    control, notify, broadcast, logging = free_ports(4)
    rel = os.path.relpath
    lab.write("labpipe.toml", f"""
        [ports]
        control = {control}
        notify = {notify}
        broadcast = {broadcast}
        logging = {logging}

        [master]
        bind = ["127.0.0.1"]

        [master.tls]
        cert = "{rel(certs.server.cert, lab.root)}"
        key = "{rel(certs.server.key, lab.root)}"
        peer = "{rel(certs.trusted_clients, lab.root)}"

        [client.tls]
        cert = "{rel(certs.client.cert, lab.root)}"
        key = "{rel(certs.client.key, lab.root)}"
        peer = "{rel(certs.server.cert, lab.root)}"
    """)
    master = ConfiguredMaster(lab.root)
    try:
        assert "with TLS" in master.ready
        result = client(lab.path("repository"), "--json", "show", "schedule")
        assert result.returncode == 0 and json.loads(result.stdout) == {}
    finally:
        master.stop()


# --- the rules, without processes ---------------------------------------------------

def _client_args(*argv):
    return client_argparser().parse_args([*argv, "show", "schedule"])


def test_client_settings_order(tmp_path):
    lab, below, home = tmp_path / "lab", tmp_path / "lab" / "sub" / "deeper", tmp_path / "home"
    below.mkdir(parents=True)
    (home / "labpipe").mkdir(parents=True)
    (home / "labpipe" / "client.toml").write_text(
        "[client]\nserver = 'user.example'\n[ports]\ncontrol = 1001\nnotify = 1002\n"
        "[client.tls]\ncert = 'c.pem'\nkey = 'c.key'\npeer = 'm.pem'\n")
    env = {"XDG_CONFIG_HOME": str(home)}
    settings = resolve(_client_args(), env, str(below))
    assert (settings.server, settings.port_control, settings.port_notify,
            settings.port_broadcast) == ("user.example", 1001, 1002, 1067)
    assert settings.tls is not None and settings.tls.cert == str(home / "labpipe" / "c.pem")
    (lab / "labpipe.toml").write_text("[ports]\ncontrol = 2001\n[security]\n")
    settings = resolve(_client_args(), env, str(below))
    assert (settings.server, settings.port_control, settings.port_notify) == \
        ("user.example", 2001, 1002)  # the lab's file over the user's, key by key
    env.update(LABPIPE_PORT_CONTROL="3001", LABPIPE_SERVER="env.example")
    settings = resolve(_client_args(), env, str(below))
    assert (settings.server, settings.port_control) == ("env.example", 3001)
    settings = resolve(_client_args("-s", "flag.example", "--port", "4001"), env,
                       str(below))
    assert (settings.server, settings.port_control) == ("flag.example", 4001)
    settings = resolve(_client_args(), {}, str(tmp_path))  # nothing anywhere
    assert (settings.server, settings.port_control, settings.port_notify,
            settings.port_broadcast, settings.tls) == ("127.0.0.1", 3251, 3250, 1067, None)
    (lab / "labpipe.toml").write_text("[ports]\ncontrol = 'x'\n")
    with pytest.raises(SettingsError, match=r"labpipe.toml: \[ports\] control: expected "
                                            "an integer"):
        resolve(_client_args(), env, str(below))


def test_master_flags_win_over_the_file():
    config = config_from_dict({"ports": {"control": 4251, "notify": 4250},
                               "master": {"bind": ["*"], "hold": ["calib"],
                                          "tls": {"cert": "a", "key": "b", "peer": "c"}}})
    args = master_args(master_argparser(), [], config)
    assert (args.port_control, args.port_notify, args.port_logging) == (4251, 4250, 1066)
    assert args.bind == ["*"] and args.ssl == ["a", "b", "c"]
    assert args.lab_config is config
    args = master_args(master_argparser(), ["--port-control", "5000", "--bind", "::1",
                                            "--ssl", "x", "y", "z"], config)
    assert (args.port_control, args.bind, args.ssl) == (5000, ["::1"], ["x", "y", "z"])
    for data, words in (({"ports": {"control": 0}}, "[ports] control: must be from 1"),
                        ({"master": {"tls": {"cert": "a"}}}, "[master.tls] needs the key"),
                        ({"master": {"hold": "calib"}}, "[master] hold: expected a list"),
                        ({"master": {"hold": [""]}}, "[master] hold: names must not be"),
                        ({"client": {"port": 1}}, "[client] unknown key 'port'")):
        with pytest.raises(ConfigError) as info:
            config_from_dict(data)
        assert words in str(info.value)
