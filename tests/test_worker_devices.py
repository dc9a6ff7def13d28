"""DeviceManager: ophyd and ARTIQ-style devices from a device_db file, aliases, controllers."""

import asyncio
import logging
import os
import sys
import textwrap
import threading

import ophyd
import ophyd.sim
import pytest

from labpipe.master.devices import DeviceDB
from labpipe.protocol.rpc import Client, Server
from labpipe.worker.devices import (DeviceAliasLoopError, DeviceError, DeviceManager,
                                    DeviceNotFoundError, StaticDeviceDB)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVERS = """
    EVENTS = []

    class Core:
        def __init__(self, dmgr, host, ref_period=1e-9):
            self.dmgr, self.host, self.ref_period = dmgr, host, ref_period
            EVENTS.append("core created")

        def close(self):
            EVENTS.append("core closed")


    class TTL:
        def __init__(self, dmgr, channel, core_device="core"):
            self.core = dmgr.get(core_device)
            self.channel = channel
            EVENTS.append(f"ttl{channel} created")

        def close(self):
            EVENTS.append(f"ttl{self.channel} closed")


    class Plain:
        def __init__(self, value=0):
            self.value = value


    class Named:
        def __init__(self, name, gain=1):
            self.name, self.gain = name, gain


    class BadClose:
        def __init__(self, dmgr):
            pass

        def close(self):
            raise RuntimeError("stuck")


    class Broken:
        def __init__(self, dmgr):
            raise OSError("no such port /dev/ttyUSB9")


    class LoopA:
        def __init__(self, dmgr):
            dmgr.get("loop_b")


    class LoopB:
        def __init__(self, dmgr):
            dmgr.get("loop_a")
"""

DEVICE_DB = """
    device_db = {
        "core": {"type": "local", "module": "lab_drivers", "class": "Core",
                 "arguments": {"host": "192.168.1.70"}},
        "ttl0": {"type": "local", "module": "lab_drivers", "class": "TTL",
                 "arguments": {"channel": 0}},
        "ttl1": {"type": "local", "module": "lab_drivers", "class": "TTL",
                 "arguments": {"channel": 1}},
        "led": "ttl1",
        "motor": {"type": "local", "module": "ophyd.sim", "class": "SynAxis",
                  "arguments": {"delay": 0.0}},
        "named_motor": {"type": "local", "module": "ophyd.sim", "class": "SynAxis",
                        "arguments": {"name": "m2"}},
        "gauss": {"type": "local", "module": "labpipe.worker.sim", "class": "MotorGauss",
                  "arguments": {"name": "gauss", "motor": "motor", "center": 0.0,
                                "Imax": 100.0}},
        "sig": {"type": "local", "module": "ophyd", "class": "Signal",
                "arguments": {"value": 3}},
        "plain": {"type": "local", "module": "lab_drivers", "class": "Plain",
                  "arguments": {"value": 4}},
        "named": {"type": "local", "module": "lab_drivers", "class": "Named"},
        "bad_close": {"type": "local", "module": "lab_drivers", "class": "BadClose"},
        "broken": {"type": "local", "module": "lab_drivers", "class": "Broken"},
        "no_module": {"type": "local", "module": "lab_drivers_absent", "class": "X"},
        "no_class": {"type": "local", "module": "lab_drivers", "class": "Absent"},
        "bad_args": {"type": "local", "module": "lab_drivers", "class": "Plain",
                     "arguments": {"volume": 11}},
        "loop_a": {"type": "local", "module": "lab_drivers", "class": "LoopA"},
        "loop_b": {"type": "local", "module": "lab_drivers", "class": "LoopB"},
        "dangling": "gone",
    }
"""


@pytest.fixture
def drivers(tmp_path, monkeypatch):
    (tmp_path / "lab_drivers.py").write_text(textwrap.dedent(DRIVERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("lab_drivers", None)
    yield
    sys.modules.pop("lab_drivers", None)


@pytest.fixture
def dmgr(tmp_path, drivers):
    path = tmp_path / "device_db.py"
    path.write_text(textwrap.dedent(DEVICE_DB))
    manager = DeviceManager(DeviceDB(str(path)), {"scheduler": "the scheduler"})
    yield manager
    manager.close_devices()


def events():
    return sys.modules["lab_drivers"].EVENTS


def test_ophyd_devices_get_their_key_as_name(dmgr):
    motor = dmgr.get("motor")
    assert isinstance(motor, ophyd.sim.SynAxis) and motor.name == "motor"
    assert dmgr.get("named_motor").name == "m2"  # an explicit name is kept
    signal = dmgr.get("sig")
    assert isinstance(signal, ophyd.Signal) and signal.name == "sig" and signal.get() == 3
    motor.set(0.0).wait(timeout=5)
    gauss = dmgr.get("gauss")
    gauss.trigger().wait(timeout=5)
    assert gauss.read()["gauss"]["value"] == pytest.approx(100.0)
    assert dmgr.get("named").name == "named"  # a non-ophyd class taking name gets it too
    assert dmgr.get("plain").value == 4 and not hasattr(dmgr.get("plain"), "name")


def test_artiq_style_devices_get_the_manager(dmgr):
    ttl = dmgr.get("ttl0")
    assert ttl.channel == 0
    assert ttl.core is dmgr.get("core")
    assert ttl.core.dmgr is dmgr and ttl.core.host == "192.168.1.70"
    assert dmgr.get("ttl0") is ttl  # cached
    assert events() == ["core created", "ttl0 created"]


def test_aliases_share_the_instance_and_requested_is_recorded(dmgr):
    assert dmgr.get("led") is dmgr.get("ttl1")
    assert dmgr.get("scheduler") == "the scheduler"
    dmgr.get("led")
    assert dmgr.requested == ["led", "core", "ttl1"]  # as asked, once, no virtual devices
    assert dmgr.get_desc("led") == {"type": "local", "module": "lab_drivers", "class": "TTL",
                                    "arguments": {"channel": 1}}


def test_unknown_devices_and_aliases(dmgr):
    with pytest.raises(DeviceNotFoundError) as info:
        dmgr.get("x")
    assert str(info.value) == "device 'x' is not in the device database"
    assert isinstance(info.value, KeyError)
    with pytest.raises(DeviceNotFoundError,
                       match=r"^device 'gone' is not in the device database \(alias dangling -> gone\)$"):
        dmgr.get("dangling")
    with pytest.raises(DeviceNotFoundError, match="'x'"):
        dmgr.get_desc("x")
    assert dmgr.requested == []


def test_alias_loop_in_a_static_database():
    dmgr = DeviceManager(StaticDeviceDB({"a": "b", "b": "a"}), {})
    with pytest.raises(DeviceAliasLoopError, match="^device 'a': alias loop a -> b -> a$"):
        dmgr.get("a")


@pytest.mark.parametrize("key, message", [
    ("broken", r"^device 'broken': lab_drivers\.Broken\(\.\.\.\) failed: "
               r"OSError: no such port /dev/ttyUSB9$"),
    ("no_module", r"^device 'no_module': cannot import module 'lab_drivers_absent': "
                  r"ModuleNotFoundError"),
    ("no_class", r"^device 'no_class': module 'lab_drivers' has no class 'Absent'$"),
    ("bad_args", r"^device 'bad_args': lab_drivers\.Plain\(\.\.\.\) failed: TypeError: .*volume"),
    ("loop_a", r"^device 'loop_a': circular dependency loop_a -> loop_b -> loop_a$"),
])
def test_devices_that_cannot_be_created(dmgr, key, message):
    with pytest.raises(DeviceError, match=message):
        dmgr.get(key)
    with pytest.raises(DeviceError):  # not cached: tried again
        dmgr.get(key)


def test_close_in_reverse_order_errors_logged(dmgr, caplog):
    dmgr.get("bad_close")
    dmgr.get("ttl0")
    dmgr.get("ttl1")
    dmgr.get("motor")
    with caplog.at_level(logging.WARNING):
        dmgr.close_devices()
    assert events()[-3:] == ["ttl1 closed", "ttl0 closed", "core closed"]
    assert "device 'bad_close': error while closing it" in caplog.text
    assert "stuck" in caplog.text
    dmgr.close_devices()  # nothing left to close
    assert events().count("core closed") == 1
    assert dmgr.get("ttl0") is not None and events()[-1] == "ttl0 created"  # new instances


class Laser:
    def __init__(self):
        self.power = 1.5

    def get_power(self):
        return self.power

    def close(self):  # must never be called remotely by close_devices
        self.power = None


@pytest.fixture
def controller():
    """An RPC server with target "laser" on a free port, in its own thread."""
    loop = asyncio.new_event_loop()
    laser = Laser()
    server = Server({"laser": laser, "other": object()})
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield server.port, laser
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_controller_entries_become_rpc_clients(controller):
    port, laser = controller
    ddb = StaticDeviceDB({
        "laser": {"type": "controller", "host": "127.0.0.1", "port": port, "target": "laser",
                  "command": "laser_ctl -p {port}"},
        "no_target": {"type": "controller", "host": "127.0.0.1", "port": port},
    })
    dmgr = DeviceManager(ddb, {})
    client = dmgr.get("laser")
    assert isinstance(client, Client)
    assert client.get_power() == 1.5
    assert dmgr.get("laser") is client
    with pytest.raises(DeviceError, match="^device 'no_target': cannot reach controller at "
                                          "127.0.0.1:.*target_name=None"):
        dmgr.get("no_target")  # two targets on that server: one must be named
    dmgr.close_devices()
    assert client._socket.fileno() == -1
    assert laser.power == 1.5  # close_rpc, not a remote close()


def test_controller_not_running_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    dmgr = DeviceManager(StaticDeviceDB({"c": {"type": "controller", "host": "127.0.0.1",
                                               "port": port}}), {})
    with pytest.raises(DeviceError, match=f"^device 'c': cannot reach controller at "
                                          f"127.0.0.1:{port}: ConnectionRefusedError"):
        dmgr.get("c")


def test_every_device_of_the_example_device_db_instantiates():
    ddb = DeviceDB(os.path.join(ROOT, "device_db.py"))
    dmgr = DeviceManager(ddb, {})
    try:
        devices = {key: dmgr.get(key) for key in ddb.get_device_db()}
        assert devices["stage"] is devices["motor"]
        assert devices["motor"].name == "motor" and devices["shutter"].name == "shutter"
        assert devices["det"].name == "det"
        devices["stage"].set(0.0).wait(timeout=5)
        devices["det"].trigger().wait(timeout=5)
        assert devices["det"].read()["det"]["value"] == pytest.approx(1000.0)
        devices["stage"].set(1.0).wait(timeout=5)
        devices["det"].trigger().wait(timeout=5)
        assert devices["det"].read()["det"]["value"] < 1000.0
    finally:
        dmgr.close_devices()
