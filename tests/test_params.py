"""Types at the door (issue 13): every RPC argument checked before the method runs.

Against a real master over the control port: the refusals of the issue's cases are one
line naming ``target.method``, the parameter, the value and what is allowed, and change
nothing; ARTIQ's types are still accepted; every exposed method has a spec.
"""

import math
from collections import OrderedDict

import numpy
import pytest

from conftest import one_line_refusal, running_master
from labpipe.master import params
from labpipe.master.targets import SPECS, Target, TargetSpecError
from labpipe.protocol.rpc import AsyncClient

#: wire-compat.md "Targets and methods", then labpipe's documented additions
#: (docs/queue-control.md, README: submit_plan, the history target)
DOCUMENTED = {
    "schedule": {"submit", "delete", "request_termination", "get_status", "check_pause",
                 "check_termination",
                 "submit_plan", "change", "hold", "release", "set_device_check", "validate",
                 # docs/queue-control.md "Queue positions", "Immediate runs"
                 "move", "move_batch", "clear", "execute_now", "set_stop_on_failure",
                 "call_function", "task_status", "task_result"},  # docs/functions.md
    "experiment_db": {"scan_repository", "scan_repository_async", "examine",
                      "list_directory", "root"},
    "dataset_db": {"get", "get_metadata", "set", "update", "delete"},
    "device_db": {"scan", "get_device_db", "get"},
    "interactive_arg_db": {"supply", "cancel"},
    "master_management": {"get_name", "terminate"},
    "history": {"get", "list", "resubmit", "wait", "read_results"},  # README: labpipe-web
    "lock": {"lock", "unlock", "info"},                # docs/access.md
    "permissions": {"allowed", "groups"},              # docs/access.md
    "console": {"text", "runs"},                       # docs/console.md
}

EXP = """
class Exp(EnvExperiment):
    def build(self):
        self.setattr_argument("x", NumberValue(1.0))

    def run(self):
        pass
"""


async def _client(master, target):
    client = AsyncClient()
    await client.connect_rpc("127.0.0.1", master.port("control"), target)
    return client


_refused = one_line_refusal


async def test_every_exposed_method_has_a_spec_and_only_documented_ones_are_exposed(lab):
    async def main():
        async with running_master(lab) as m:
            assert set(m.targets) == set(DOCUMENTED) == set(SPECS)
            for name in DOCUMENTED:
                client = await _client(m, name)
                try:
                    listed = set((await client.get_rpc_method_list())["methods"])
                finally:
                    client.close_rpc()
                assert listed == DOCUMENTED[name] == set(SPECS[name]), name
    await main()


async def test_method_list_keeps_the_artiq_signatures(lab):
    async def main():
        async with running_master(lab) as m:
            client = await _client(m, "schedule")
            try:
                methods = (await client.get_rpc_method_list())["methods"]
            finally:
                client.close_rpc()
            spec = methods["submit"][0]
            assert spec["args"] == ["pipeline_name", "expid", "priority", "due_date", "flush"]
            assert spec["defaults"] == (0, None, False)
            assert methods["submit"][1]  # the docstring came along
    await main()


async def test_rids_are_ints_only(lab):
    lab.experiment("exp", EXP)

    async def main():
        async with running_master(lab) as m:
            schedule = await _client(m, "schedule")
            history = await _client(m, "history")
            try:
                rid = await schedule.submit("main", {"file": "repository/exp.py",
                                                     "class_name": "Exp", "arguments": {},
                                                     "log_level": 30})
                assert rid == 0
                await history.wait(rid, 30.0)
                assert (await history.get(0))["rid"] == 0
                # false is 0 to Python: it must not give RID 0's record
                await _refused(history.get(False), TypeError, "history.get: rid must be",
                               "got False (bool)")
                await _refused(history.get(0.0), TypeError, "rid", "got 0.0 (float)")
                await _refused(history.get(numpy.int64(0)), TypeError, "rid",
                               "(numpy.int64)")
                await _refused(schedule.check_pause(True), TypeError, "schedule.check_pause")
                await _refused(history.get(10 ** 30), ValueError, "history.get: rid",
                               "from 0 to 9223372036854775807")
                await _refused(history.list(10, 2 ** 64), ValueError, "before_rid")
                # delete ignores unscheduled RIDs (ARTIQ) but not non-RIDs
                await _refused(schedule.delete(1.0), TypeError, "schedule.delete: rid")
            finally:
                schedule.close_rpc()
                history.close_rpc()
    await main()


async def test_due_dates_and_timeouts_must_be_finite(lab):
    lab.experiment("exp", EXP)
    expid = {"file": "repository/exp.py", "class_name": "Exp", "arguments": {},
             "log_level": 30}

    async def main():
        async with running_master(lab) as m:
            schedule = await _client(m, "schedule")
            history = await _client(m, "history")
            try:
                await schedule.hold("main")
                for bad in (math.nan, math.inf, -math.inf, 10 ** 400, True, "soon"):
                    await _refused(schedule.submit("main", expid, 0, bad, False),
                                   (TypeError, ValueError), "schedule.submit: due_date must "
                                   "be None or a finite number")
                assert await schedule.get_status() == {}  # nothing was submitted
                # ARTIQ's types: due_date None or a number, priority int, flush bool
                rid = await schedule.submit("main", expid, 0, None, False)
                timed = await schedule.submit("main", expid, -3, 4e9, True)
                for bad in (math.nan, math.inf):
                    await _refused(schedule.change(rid, due_date=bad), ValueError,
                                   "schedule.change: due_date")
                status = await schedule.get_status()
                assert status[rid]["due_date"] is None and status[timed]["due_date"] == 4e9
                for bad in (math.nan, -1, math.inf, 1e300):
                    await _refused(history.wait(rid, bad), ValueError,
                                   "history.wait: timeout must be None or a finite number "
                                   "of seconds from 0 to")
                with pytest.raises(TimeoutError):
                    await history.wait(rid, 0.01)
                await schedule.delete(rid)
                await schedule.delete(timed)
            finally:
                schedule.close_rpc()
                history.close_rpc()
    await main()


async def test_paths_strings_and_expid_shape(lab):
    async def main():
        async with running_master(lab) as m:
            experiment_db = await _client(m, "experiment_db")
            schedule = await _client(m, "schedule")
            try:
                await _refused(experiment_db.list_directory(None), TypeError,
                               "experiment_db.list_directory: directory must be a path",
                               "got None (NoneType)")
                await _refused(experiment_db.list_directory("a\0b"), ValueError, "directory")
                await _refused(experiment_db.examine(5), TypeError, "filename", "got 5 (int)")
                assert "repository/" in await experiment_db.list_directory("")
                await _refused(schedule.submit("", {"file": "x.py"}), ValueError,
                               "pipeline_name must be a str of 1 to 1024 characters")
                await _refused(schedule.submit("p" * 2000, {"file": "x.py"}), ValueError,
                               "pipeline_name", "...")
                message = await _refused(
                    schedule.submit("main", {"file": "x.py", "argumnets": {}}), ValueError,
                    "schedule.submit: expid has unknown key 'argumnets'; valid keys: "
                    "arguments, class_name, content, devarg_override, file, log_level, "
                    "repo_rev")
                assert len(message) < 300
                await _refused(schedule.submit("main", {"file": "x.py", "log_level": "10"}),
                               TypeError, "expid['log_level'] must be an int")
                await _refused(schedule.submit("main", {"file": 3}), TypeError,
                               "expid['file'] must be a path")
                await _refused(schedule.submit("main", {"file": "x.py", "arguments": []}),
                               TypeError, "expid['arguments'] must be a dict")
                await _refused(schedule.submit("main", {"file": "x.py"}, flush=1), TypeError,
                               "flush must be a bool, got 1 (int)")
                await _refused(schedule.submit("main", {"file": "x.py"}, 1.5), TypeError,
                               "priority must be an int")
                await _refused(schedule.submit("main", {"file": "x.py"}, bogus=1), TypeError,
                               "schedule.submit: unknown argument 'bogus'; parameters: "
                               "pipeline_name, expid, priority, due_date, flush")
                await _refused(schedule.submit("main"), TypeError,
                               "schedule.submit: missing argument 'expid'")
                await _refused(schedule.get_status(1), TypeError,
                               "schedule.get_status: takes no arguments")
                assert await schedule.get_status() == {}
            finally:
                experiment_db.close_rpc()
                schedule.close_rpc()
    await main()


async def test_values_must_round_trip(lab):
    lab.experiment("exp", EXP)

    async def main():
        async with running_master(lab) as m:
            datasets = await _client(m, "dataset_db")
            schedule = await _client(m, "schedule")
            try:
                deep = 1
                for _ in range(40):
                    deep = [deep]
                await _refused(datasets.set("d", deep), ValueError,
                               "dataset_db.set: value must be a PYON value", "nested too deep")
                await _refused(datasets.set("d", 10 ** 2000), ValueError, "value",
                               "<an int of 6644 bits> (int)", "an int too long")
                await _refused(datasets.set("d", 1, metadata={"unit": deep}), ValueError,
                               "metadata['unit']")
                await _refused(datasets.update({"action": "setitem", "path": [], "key": "d",
                                                "value": deep}), ValueError,
                               "mod['value']")
                await _refused(datasets.update({"action": "grow", "path": []}), ValueError,
                               "mod['action'] must be one of 'setitem'")
                await _refused(datasets.get(None), TypeError, "dataset_db.get: key")
                # nothing was set; the datasets notifier still encodes
                with pytest.raises(Exception, match="does not exist"):
                    await datasets.get("d")
                await datasets.set("d", [1, (2, 3), {4: numpy.arange(3)}], True,
                                   OrderedDict(unit="V"))
                assert (await datasets.get("d"))[1] == (2, 3)
                rid = await schedule.submit("main", {"file": "repository/exp.py",
                                                     "arguments": {"x": 2.0}})
                await schedule.hold("other")
                await _refused(schedule.change(rid, arguments={"x": deep}), ValueError,
                               "schedule.change: arguments['x']")
                await _refused(schedule.change(rid, arguments={1: 2}), TypeError,
                               "a key of arguments must be a str")
                await _refused(schedule.submit("main", {"file": "repository/exp.py",
                                                        "arguments": {"x": deep}}),
                               ValueError, "expid['arguments']['x']")
                await schedule.get_status()  # still encodable for every client
            finally:
                datasets.close_rpc()
                schedule.close_rpc()
    await main()


async def test_interactive_devices_history_management(lab):
    async def main():
        async with running_master(lab, name="lab1") as m:
            clients = {name: await _client(m, name) for name in
                       ("interactive_arg_db", "device_db", "history", "master_management")}
            try:
                await _refused(clients["interactive_arg_db"].supply("1", {}), TypeError,
                               "interactive_arg_db.supply: rid")
                await _refused(clients["interactive_arg_db"].supply(1, [1]), TypeError,
                               "values must be a dict")
                # well-typed: the method runs (and raises ValueError, as ARTIQ's master)
                with pytest.raises(ValueError, match="RID 1 is not waiting"):
                    await clients["interactive_arg_db"].cancel(1)
                await _refused(clients["device_db"].get(["x"]), TypeError,
                               "device_db.get: key")
                await _refused(clients["device_db"].get("x", 1), TypeError, "resolve_alias")
                await _refused(clients["history"].list(-1), ValueError, "history.list: limit")
                await _refused(clients["history"].resubmit(0, {"pipline": "x"}), ValueError,
                               "overrides has unknown key 'pipline'; valid keys:")
                await _refused(clients["history"].resubmit(0, {"priority": None}), TypeError,
                               "overrides['priority']")
                await _refused(clients["master_management"].terminate(1), TypeError,
                               "master_management.terminate: takes no arguments")
                assert not m.terminate_requested.is_set()
                assert await clients["master_management"].get_name() == "lab1"
            finally:
                for client in clients.values():
                    client.close_rpc()
    await main()


# --- the check vocabulary on its own ---------------------------------------------------

def test_shorten_is_short_and_one_line():
    assert params.shorten(True) == "True (bool)"
    assert params.shorten(10 ** 5000) == "<an int of 16610 bits> (int)"
    text = params.shorten(numpy.zeros((50, 50)))
    assert "\n" not in text and len(text) < 120 and text.endswith("(numpy.ndarray)")
    assert len(params.shorten("x" * 10 ** 6)) < 100
    deep = []
    for _ in range(900):
        deep = [deep]
    assert len(params.shorten(deep)) < 100


def test_a_spec_must_match_its_method():
    class Obj:
        def get(self, key, resolve_alias=False):
            return key

    spec = {"get": (params.Param("key", params.Str(10)),
                    params.Param("resolve_alias", params.Bool(), True))}
    with pytest.raises(TargetSpecError, match="does not match"):
        Target(Obj(), "obj", spec)
    spec = {"get": (params.Param("key", params.Str(10)),
                    params.Param("resolve_alias", params.Bool(), False))}
    target = Target(Obj(), "obj", spec)
    assert target.get("k") == "k"
    assert not hasattr(target, "__dict__") or set(vars(target)) == {"get", "__doc__"}
    with pytest.raises(ValueError, match=r"^obj.get: key must be a str of 0 to 10 "):
        target.get("k" * 11)


def test_every_spec_default_passes_its_own_check():
    for target, methods in SPECS.items():
        for method, spec in methods.items():
            params.Method(f"{target}.{method}", spec)  # raises if a default is refused
