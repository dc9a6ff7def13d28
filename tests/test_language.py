"""The experiment API: argument processors, argument managers, HasEnvironment."""

import pickle

import numpy
import pytest

import labpipe.experiment
from labpipe.experiment import (BooleanValue, CancelledArgsError, DefaultMissing,
                                EnumerationValue, EnvExperiment, Experiment,
                                HasEnvironment, NumberValue, ProcessArgumentManager,
                                PYONValue, StringValue, TraceArgumentManager,
                                UnknownArgumentsError, ArgumentError, is_experiment, MHz,
                                us)
from labpipe.language.argument_managers import describe_arglist, process_values
from labpipe.protocol import pyon


# Fakes that record what the environment asks of them ------------------------------

class RecordingDevices:
    def __init__(self):
        self.requested = []

    def get(self, key):
        self.requested.append(key)
        return f"<device {key}>"


class RecordingDatasets:
    def __init__(self, data=None):
        self.data = dict(data or {})
        self.metadata = {}
        self.calls = []

    def set(self, key, value, metadata, broadcast, persist, archive):
        self.calls.append(("set", key, value, metadata, broadcast, persist, archive))
        self.data[key] = value
        self.metadata[key] = metadata

    def get(self, key, archive=False):
        self.calls.append(("get", key, archive))
        return self.data[key]

    def get_metadata(self, key):
        return self.metadata[key]

    def mutate(self, key, index, value):
        self.calls.append(("mutate", key, index, value))

    def append_to(self, key, value):
        self.calls.append(("append_to", key, value))


class InteractiveArguments(ProcessArgumentManager):
    """Answers interactive requests with given values (or cancels with None)."""

    def __init__(self, arguments, answer):
        super().__init__(arguments)
        self.answer = answer
        self.requests = []

    def get_interactive(self, arglist, title):
        self.requests.append((describe_arglist(arglist), title))
        if self.answer is None:
            raise CancelledArgsError
        return process_values(arglist, self.answer)


def managers(arguments=None, argument_mgr=None, datasets=None):
    return (RecordingDevices(), datasets if datasets is not None else RecordingDatasets(),
            argument_mgr or ProcessArgumentManager(arguments or {}), {})


# Argument processors ---------------------------------------------------------------

def test_numbervalue_is_float_unless_int_compatible_as_in_artiq():
    assert NumberValue(5).describe()["type"] == "auto"
    assert not NumberValue(5).is_int
    assert NumberValue(5).default() == 5.0 and isinstance(NumberValue(5).default(), float)
    assert not NumberValue(5, step=1).is_int  # precision 2
    as_int = NumberValue(5, step=1, precision=0)
    assert as_int.describe()["type"] == "auto" and as_int.is_int
    assert as_int.process(7.0) == 7 and type(as_int.process(7.0)) is int
    as_float = NumberValue(5, type="float", step=1, precision=0)
    assert as_float.describe()["type"] == "float" and not as_float.is_int


def test_numbervalue_type_int_needs_artiqs_settings_with_artiqs_message():
    # Changed on purpose (issue 14): type="int" no longer defaults step and precision;
    # ARTIQ refuses NumberValue(5, type="int") and so does labpipe, in ARTIQ's words.
    proc = NumberValue(5, step=1, precision=0, type="int", min=0, max=10)
    assert proc.describe() == {"ty": "NumberValue", "default": 5, "unit": "", "scale": 1.0,
                               "step": 1, "min": 0, "max": 10, "precision": 0,
                               "type": "int"}
    message = ("Value marked as integer but settings are not compatible. Please set "
               "precision = 0, scale = 1 and step to an integer")
    for bad in (dict(), dict(step=1), dict(precision=0), dict(precision=0, step=0.5),
                dict(precision=0, step=1, scale=2)):
        with pytest.raises(ValueError) as info:
            NumberValue(5, type="int", **bad)
        assert str(info.value) == message, bad
    with pytest.raises(ValueError) as info:
        NumberValue(5, "MHz", step=1, precision=0, type="int")
    assert str(info.value) == message
    with pytest.raises(TypeError) as info:
        NumberValue(1, type="complex")
    assert str(info.value) == "type must be 'float', 'int' or 'auto'"


def test_numbervalue_process_checks_type_and_range():
    proc = NumberValue(5, step=1, precision=0, type="int", min=0, max=10)
    assert proc.process(numpy.int64(3)) == 3
    with pytest.raises(ArgumentError, match="12 is above the maximum 10"):
        proc.process(12)
    with pytest.raises(ArgumentError, match="-1 is below the minimum 0"):
        proc.process(-1)
    with pytest.raises(ArgumentError, match="expected an integer, got 2.5"):
        proc.process(2.5)
    with pytest.raises(ArgumentError, match="expected a number, got True"):
        proc.process(True)
    with pytest.raises(ArgumentError, match="expected a number, got '3'"):
        proc.process("3")
    floats = NumberValue(0.5, min=0.0, max=1.0)
    assert floats.process(1) == 1.0 and type(floats.process(1)) is float
    with pytest.raises(ArgumentError, match="nan"):
        floats.process(float("nan"))


def test_numbervalue_units_and_bad_definitions():
    proc = NumberValue(2*MHz, "MHz")
    assert proc.describe()["scale"] == 1e6 and proc.describe()["step"] == 1e5
    assert NumberValue(1*us, "us").default() == 1e-6
    assert NumberValue(1, "xyz", scale=1e-3).describe()["scale"] == 1e-3
    with pytest.raises(KeyError) as info:
        NumberValue(1, "xyz")
    assert info.value.args[0] == "Unit xyz is unknown, you must specify the scale manually"
    assert NumberValue(1, "mW").scale == 1e-3 and NumberValue(1, "mHz").scale == 1e-3
    with pytest.raises(ValueError, match="min 2 is above max 1"):
        NumberValue(1, min=2, max=1)
    with pytest.raises(ArgumentError, match="invalid default 20: 20.0 is above the maximum"):
        NumberValue(20, max=10)
    with pytest.warns(DeprecationWarning):
        assert NumberValue(1, ndecimals=4).describe()["precision"] == 4


def test_simple_processors():
    assert StringValue("a").describe() == {"ty": "StringValue", "default": "a"}
    with pytest.raises(ArgumentError, match="expected a string"):
        StringValue().process(3)
    assert BooleanValue(False).describe() == {"ty": "BooleanValue", "default": False}
    assert BooleanValue().process(numpy.bool_(True)) is True
    with pytest.raises(ArgumentError, match="expected True or False"):
        BooleanValue().process(1)
    with pytest.raises(DefaultMissing):
        StringValue().default()


def test_enumerationvalue_checks_choices():
    proc = EnumerationValue(("fast", "slow"), "slow", quickstyle=True)
    assert proc.describe() == {"ty": "EnumerationValue", "default": "slow",
                               "choices": ["fast", "slow"], "quickstyle": True}
    assert proc.process("fast") == "fast"
    with pytest.raises(ArgumentError, match="'medium' is not one of the choices 'fast', 'slow'"):
        proc.process("medium")
    with pytest.raises(ArgumentError, match="invalid default"):
        EnumerationValue(["a"], "b")


def test_pyonvalue_decodes_text_and_never_evaluates_it():
    proc = PYONValue({"a": (1, 2)})
    assert proc.default() == {"a": (1, 2)}
    assert pyon.decode(proc.describe()["default"]) == {"a": (1, 2)}
    assert proc.process('{"x":[1,2.5,null]}') == {"x": [1, 2.5, None]}
    assert proc.process([1, 2]) == [1, 2]  # already decoded (e.g. by a command line)
    with pytest.raises(ArgumentError, match="cannot decode PYON"):
        proc.process("__import__('os').getcwd()")
    with pytest.raises(ArgumentError, match="invalid default"):
        PYONValue(object())
    assert "default" not in PYONValue().describe()


# Argument managers -----------------------------------------------------------------

def test_process_manager_names_the_argument_in_errors():
    mgr = ProcessArgumentManager({"n": 12, "s": "x"})
    with pytest.raises(ArgumentError) as info:
        mgr.get("n", NumberValue(1, step=1, precision=0, type="int", max=10), None, None)
    assert str(info.value) == "argument 'n': 12 is above the maximum 10"
    assert info.value.key == "n"
    with pytest.raises(DefaultMissing, match="argument 'm': no value was submitted"):
        mgr.get("m", NumberValue(), None, None)
    assert mgr.get("s", StringValue(), None, None) == "x"
    assert mgr.get("absent", StringValue("d"), None, None) == "d"


def test_process_manager_wraps_any_processing_error():
    class Picky:
        def process(self, x):
            raise KeyError("no such thing")

        def default(self):
            raise DefaultMissing

    mgr = ProcessArgumentManager({"p": 1})
    with pytest.raises(ArgumentError, match=r"argument 'p': no such thing \(KeyError\)"):
        mgr.get("p", Picky(), None, None)


def test_check_unprocessed_lists_unknown_and_valid_names():
    mgr = ProcessArgumentManager({"n": 1, "typo": 2, "other": 3})
    mgr.get("n", NumberValue(0), None, None)
    mgr.get("m", NumberValue(0), None, None)
    with pytest.raises(UnknownArgumentsError) as info:
        mgr.check_unprocessed()
    assert str(info.value) == ("unknown argument(s) 'other', 'typo'; "
                               "this experiment takes: 'm', 'n'")
    ok = ProcessArgumentManager({"n": 1})
    ok.get("n", NumberValue(0), None, None)
    ok.check_unprocessed()
    ok.check_unprocessed_arguments()


def test_process_manager_has_no_interactive_arguments_of_its_own():
    with pytest.raises(NotImplementedError, match="need a master"):
        ProcessArgumentManager({}).get_interactive([], "t")


def test_errors_survive_pickling():
    for error in (ArgumentError("bad", "n"), DefaultMissing(key="m"),
                  UnknownArgumentsError({"x"}, ["a"])):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)


def test_trace_manager_records_requests_and_returns_defaults():
    mgr = TraceArgumentManager()
    n = NumberValue(3)
    assert mgr.get("n", n, "group", "tip") == 3.0
    assert mgr.get("s", StringValue(), None, None) is None
    assert list(mgr.requested_args) == ["n", "s"]
    assert mgr.requested_args["n"] == (n, "group", "tip")
    arglist = [("a", BooleanValue(True), None, None), ("b", StringValue(), None, None)]
    assert mgr.get_interactive(arglist, "title") == {"a": True, "b": None}


# HasEnvironment ----------------------------------------------------------------------

class Tunable(EnvExperiment):
    def build(self, offset=0):
        self.offset = offset
        self.setattr_argument("n", NumberValue(1, step=1, precision=0, type="int", max=10), "Main", "count")
        self.setattr_device("core")

    def run(self):
        pass


def test_build_gets_arguments_devices_and_extra_parameters():
    devices, datasets, arguments, defaults = managers({"n": 4})
    exp = Tunable((devices, datasets, arguments, defaults), offset=2)
    assert (exp.n, exp.offset, exp.core) == (4, 2, "<device core>")
    assert devices.requested == ["core"]
    assert exp.kernel_invariants == {"n", "core"}
    with pytest.raises(ArgumentError, match="argument 'n': 11 is above the maximum 10"):
        Tunable(managers({"n": 11}))


def test_get_argument_only_in_build_and_needs_a_processor():
    exp = Tunable(managers())
    with pytest.raises(TypeError, match=r"get_argument\('x'\) can only be called in build"):
        exp.get_argument("x", NumberValue(0))

    class NoProcessor(EnvExperiment):
        def build(self):
            self.setattr_argument("x")

    with pytest.raises(TypeError, match="argument 'x' needs a processor"):
        NoProcessor(managers())


def test_bad_managers_are_refused_clearly():
    with pytest.raises(TypeError, match="parent HasEnvironment or the tuple"):
        Tunable(("only", "two"))


def test_datasets_go_to_the_dataset_manager():
    datasets = RecordingDatasets({"old": 7})
    exp = Tunable(managers(datasets=datasets))
    exp.set_dataset("f", 1.5, unit="MHz", scale=1e6, broadcast=True)
    exp.set_dataset("plain", [1], persist=True, archive=False)
    exp.mutate_dataset("f", 0, 2.0)
    exp.append_to_dataset("plain", 2)
    assert exp.get_dataset("old") == 7
    assert exp.get_dataset("missing", default=None, archive=False) is None
    with pytest.raises(KeyError):
        exp.get_dataset("missing")
    exp.setattr_dataset("old")
    assert exp.old == 7
    assert exp.get_dataset_metadata("f") == {"unit": "MHz", "scale": 1e6}
    assert exp.get_dataset_metadata("nope", default={}) == {}
    assert datasets.calls == [
        ("set", "f", 1.5, {"unit": "MHz", "scale": 1e6}, True, False, True),
        ("set", "plain", [1], {}, False, True, False),
        ("mutate", "f", 0, 2.0),
        ("append_to", "plain", 2),
        ("get", "old", True),
        ("get", "missing", False),
        ("get", "missing", True),
        ("get", "old", True),
    ]


def test_ccb_is_the_ccb_device_and_setattr_device_still_works():
    class Issuer(EnvExperiment):
        def run(self):
            pass

    devices = RecordingDevices()
    exp = Issuer((devices, RecordingDatasets(), ProcessArgumentManager({}), {}))
    assert exp.ccb == "<device ccb>"
    exp.setattr_device("ccb")
    assert exp.ccb == "<device ccb>"
    assert devices.requested == ["ccb", "ccb"]


def test_set_default_scheduling_fills_the_defaults_in_build_only():
    class Scheduled(EnvExperiment):
        def build(self):
            self.set_default_scheduling(priority="2", pipeline_name="slow", flush=1)

        def run(self):
            self.set_default_scheduling(priority=1)

    devices, datasets, arguments, defaults = managers()
    exp = Scheduled((devices, datasets, arguments, defaults))
    assert defaults == {"priority": 2, "pipeline_name": "slow", "flush": True}
    with pytest.raises(TypeError, match="only be called in build"):
        exp.run()


class Child(HasEnvironment):
    def build(self, name):
        self.name = name
        self.setattr_argument(f"{name}_gain", NumberValue(1.0))
        self.setattr_device("dac")
        self.set_default_scheduling(priority=5)
        self.prepared = False

    def prepare(self):
        self.prepared = True


class Parent(EnvExperiment):
    def build(self):
        self.a = Child(self, "a")
        self.b = Child(self, name="b")
        self.plain = HasEnvironment(self)

    def run(self):
        pass


def test_children_share_the_parents_managers():
    devices, datasets, arguments, defaults = managers({"b_gain": 2.0})
    exp = Parent((devices, datasets, arguments, defaults))
    assert exp.children == [exp.a, exp.b, exp.plain]
    assert (exp.a.a_gain, exp.b.b_gain) == (1.0, 2.0)
    assert devices.requested == ["dac", "dac"]
    assert defaults == {"priority": 5}
    arguments.check_unprocessed()
    exp.prepare()
    assert exp.a.prepared and exp.b.prepared


def test_interactive_asks_the_argument_manager_and_sets_the_namespace():
    arguments = InteractiveArguments({}, {"v": 3})
    exp = Tunable(managers(argument_mgr=arguments))
    with exp.interactive("Calibrate") as ia:
        ia.setattr_argument("v", NumberValue(1, step=1, precision=0, type="int"), "g", "tip")
        ia.setattr_argument("w", StringValue("dflt"))
    assert (ia.v, ia.w) == (3, "dflt")
    assert not hasattr(ia, "setattr_argument")
    desc, title = arguments.requests[0]
    assert title == "Calibrate"
    assert [row[0] for row in desc] == ["v", "w"]
    assert desc[0][1]["type"] == "int" and desc[0][2:] == ["g", "tip"]


def test_interactive_cancel_and_unsupported_managers():
    exp = Tunable(managers(argument_mgr=InteractiveArguments({}, None)))
    with pytest.raises(CancelledArgsError):
        with exp.interactive() as ia:
            ia.setattr_argument("v", NumberValue(1))

    class Plain:
        def get(self, key, processor, group, tooltip):
            return processor.default()

    exp = Tunable(managers(argument_mgr=Plain()))
    with pytest.raises(NotImplementedError, match="not supported by Plain"):
        with exp.interactive():
            pass


def test_experiment_classes():
    assert is_experiment(Tunable) and is_experiment(Parent)
    assert not is_experiment(EnvExperiment) and not is_experiment(Experiment)
    assert not is_experiment(Child) and not is_experiment(Tunable(managers()))

    class Lazy(EnvExperiment):
        pass

    with pytest.raises(NotImplementedError, match="Lazy does not define run"):
        Lazy(managers()).run()


def test_experiment_module_exports_the_api():
    namespace: dict = {}
    exec("from labpipe.experiment import *", namespace)
    for name in ("EnvExperiment", "NumberValue", "Scannable", "RangeScan", "CenterScan",
                 "TerminationRequested", "CancelledArgsError", "ArgumentError", "MHz",
                 "us", "NoDefault", "ProcessArgumentManager", "TraceArgumentManager"):
        assert name in namespace, name
    assert set(labpipe.experiment.__all__) <= set(namespace)


def test_experiment_module_exports_what_language_exports():
    import labpipe.language
    assert labpipe.experiment.__all__ == labpipe.language.__all__
