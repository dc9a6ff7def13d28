"""DeviceDB: loading device_db.py, scans publishing only differences, broken edits refused."""

import copy
import os
import textwrap

import pytest

from labpipe.master.devices import (DeviceAliasLoopError, DeviceDB, DeviceDBError,
                                    DeviceNotFoundError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """
    device_db = {
        "motor": {"type": "local", "module": "ophyd.sim", "class": "SynAxis",
                  "arguments": {"delay": 0.0}},
        "ctl": {"type": "controller", "host": "::1", "port": 3253, "command": "x -p {port}"},
        "stage": "motor",
        "stage2": "stage",
    }
"""


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))


@pytest.fixture
def db_file(tmp_path):
    path = tmp_path / "device_db.py"
    write(path, GOOD)
    return str(path)


def test_load_and_get(db_file):
    ddb = DeviceDB(db_file)
    motor = {"type": "local", "module": "ophyd.sim", "class": "SynAxis",
             "arguments": {"delay": 0.0}}
    assert ddb.get_device_db() == ddb.data.raw_view
    assert list(ddb.get_device_db()) == ["motor", "ctl", "stage", "stage2"]
    assert ddb.get("motor") == motor
    assert ddb.get("stage2") == "stage"
    assert ddb.get("stage2", resolve_alias=True) == motor
    with pytest.raises(DeviceNotFoundError, match="^device 'nope' is not in the device database$"):
        ddb.get("nope")
    with pytest.raises(KeyError):
        ddb.get("nope", resolve_alias=True)


def test_scan_publishes_only_differences(db_file):
    ddb = DeviceDB(db_file)
    mods = []
    ddb.data.add_listener(lambda mod: mods.append(copy.deepcopy(mod)))
    ddb.scan()
    assert mods == []  # nothing changed
    write(db_file, """
        device_db = {
            "motor": {"type": "local", "module": "ophyd.sim", "class": "SynAxis",
                      "arguments": {"delay": 0.0}},
            "ctl": {"type": "controller", "host": "::1", "port": 3254, "command": "x -p {port}"},
            "stage": "motor",
            "shutter": {"type": "local", "module": "ophyd", "class": "Signal"},
        }
    """)
    ddb.scan()
    assert mods == [
        {"action": "delitem", "path": [], "key": "stage2"},
        {"action": "setitem", "path": [], "key": "ctl",
         "value": {"type": "controller", "host": "::1", "port": 3254, "command": "x -p {port}"}},
        {"action": "setitem", "path": [], "key": "shutter",
         "value": {"type": "local", "module": "ophyd", "class": "Signal"}},
    ]
    assert set(ddb.get_device_db()) == {"motor", "ctl", "stage", "shutter"}
    mods.clear()
    ddb.scan()
    assert mods == []


BROKEN = {
    "syntax": ("device_db = {\n  'a': ,\n}\n", r"^device_db\.py: line 2: syntax error: "),
    "exception": ("x = 1\ndevice_db = {'a': undefined_name}\n",
                  r"^device_db\.py: line 2: NameError: name 'undefined_name' is not defined"),
    "oserror_in_code": ("open('/nonexistent/file')\ndevice_db = {}\n",
                        r"^device_db\.py: line 1: FileNotFoundError: .*/nonexistent/file"),
    "exit": ("import sys\nsys.exit(3)\n", r"^device_db\.py: line 2: SystemExit: 3"),
    "missing": ("devices = {}\n", r"^device_db\.py does not define the dict device_db"),
    "not_a_dict": ("device_db = [1]\n", r"device_db must be a dict, not list"),
    "bad_entry": ("device_db = {'a': 5}\n", r"device 'a': an entry must be a dict"),
    "bad_type": ("device_db = {'a': {'type': 'magic'}}\n", r"type 'magic' is not 'local'"),
    "no_module": ("device_db = {'a': {'type': 'local', 'class': 'C'}}\n",
                  r"device 'a': a local entry needs a 'module' string"),
    "bad_arguments": ("device_db = {'a': {'type': 'local', 'module': 'm', 'class': 'C', "
                      "'arguments': [1]}}\n", r"'arguments' must be a dict"),
    "bad_port": ("device_db = {'a': {'type': 'controller', 'host': 'h', 'port': '1'}}\n",
                 r"needs an integer 'port'"),
    "bad_key": ("device_db = {1: 'a'}\n", r"key 1 is not a str"),
    "alias_loop": ("device_db = {'a': 'b', 'b': 'c', 'c': 'a'}\n", r"alias loop a -> b -> c -> a"),
    "unencodable": ("device_db = {'a': {'type': 'local', 'module': 'm', 'class': 'C', "
                    "'arguments': {'f': object()}}}\n", r"device 'a': cannot be published"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_edit_is_refused_and_the_last_good_version_kept(db_file, case):
    text, message = BROKEN[case]
    ddb = DeviceDB(db_file)
    before = copy.deepcopy(ddb.get_device_db())
    mods = []
    ddb.data.add_listener(mods.append)
    write(db_file, text)
    with pytest.raises(DeviceDBError, match=message) as info:
        ddb.scan()
    assert "\n" not in str(info.value)
    assert str(info.value).endswith("; the previous device database stays in force")
    assert mods == []
    assert ddb.get_device_db() == before
    assert ddb.get("stage", resolve_alias=True)["class"] == "SynAxis"
    # A later good edit is taken as usual.
    write(db_file, GOOD.replace('"stage2": "stage",', ""))
    ddb.scan()
    assert mods == [{"action": "delitem", "path": [], "key": "stage2"}]


def test_broken_file_at_start_is_a_clear_error(tmp_path):
    path = tmp_path / "device_db.py"
    write(path, "device_db = {'a': 'b', 'b': 'a'}\n")
    with pytest.raises(DeviceDBError, match="alias loop"):
        DeviceDB(str(path))
    with pytest.raises(DeviceDBError, match="cannot read"):
        DeviceDB(str(tmp_path / "absent.py"))


def test_dangling_alias_is_accepted_and_fails_when_used(tmp_path, caplog):
    path = tmp_path / "device_db.py"
    write(path, "device_db = {'a': 'b', 'b': 'gone'}\n")
    ddb = DeviceDB(str(path))
    assert "'gone' is not in the device database" in caplog.text
    with pytest.raises(DeviceNotFoundError,
                       match=r"^device 'gone' is not in the device database \(alias a -> b -> gone\)$"):
        ddb.get("a", resolve_alias=True)


def test_alias_loop_detected_by_get(db_file):
    ddb = DeviceDB(db_file)
    # Loops are refused by scan; get still guards against one in the data.
    ddb.data["stage"] = "stage2"
    with pytest.raises(DeviceAliasLoopError, match="alias loop stage -> stage2 -> stage"):
        ddb.get("stage", resolve_alias=True)


def test_the_example_device_db_loads():
    ddb = DeviceDB(os.path.join(ROOT, "device_db.py"))
    assert {"motor", "det", "shutter", "stage"} <= set(ddb.get_device_db())
    assert ddb.get("stage", resolve_alias=True) == ddb.get("motor")
