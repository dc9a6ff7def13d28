"""The master-worker message protocol (``labpipe.worker.messages``) and its dispatch.

Every message round-trips through its encoding (and through PYON and pickle, what the
pipes could carry); what is not a message of the expected direction is refused with
one line; the master's dispatch tables cover what a worker may send; and a real worker
and a real master refuse malformed messages without failing the run.
"""

import dataclasses
import logging
import os
import pickle
import tempfile
import types
import typing

import pytest

from conftest import Lab, run_ends, running_master, session_launcher, wait_until
from labpipe.protocol import pyon
from labpipe.worker import messages
from labpipe.worker.handle import Handlers
from labpipe.worker.messages import (FROM_EXAMINER, FROM_WORKER, TO_EXAMINER, TO_WORKER,
                                     MalformedMessage, decode, encode)
from labpipe.worker.output import receive_output_fd

CATALOGUES = (TO_WORKER, FROM_WORKER, TO_EXAMINER, FROM_EXAMINER)


def _sample(annotation, variant):
    """A value of the annotated type; variant 1 picks None where it is allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if variant == 1 and type(None) in members:
            return None
        return _sample(next(m for m in members if m is not type(None)), variant)
    samples = {int: 7, float: 2.5, bool: True, str: "text", typing.Any: {"x": [1, 2.5]}}
    if annotation in samples:
        return samples[annotation]
    return {dict: {"key": [1, "a"]}, list: [1, "a", None], tuple: ("a", "b")}[
        origin or annotation]


def _examples(cls):
    hints = typing.get_type_hints(cls)
    for variant in (0, 1):
        yield cls(*(_sample(hints[f.name], variant) for f in dataclasses.fields(cls)))


def _catalogue_of(cls):
    [catalogue] = [c for c in CATALOGUES if cls in c]
    return catalogue


@pytest.mark.parametrize("cls", messages.registered(), ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    catalogue = _catalogue_of(cls)  # exactly one direction
    for msg in _examples(cls):
        wire = encode(msg)
        assert type(wire) is tuple and wire[0] == messages.tag_of(cls)
        assert decode(wire, catalogue) == msg
        # plain data: the same after pickling (the pipes) and PYON
        assert decode(pickle.loads(pickle.dumps(wire)), catalogue) == msg
        assert decode(pyon.decode(pyon.encode(wire)), catalogue) == msg
        for field in dataclasses.fields(cls):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(msg, field.name, None)


def test_every_message_is_in_one_direction_with_its_own_tag():
    seen = [cls for catalogue in CATALOGUES for cls in catalogue.classes]
    assert sorted(seen, key=repr) == sorted(messages.registered(), key=repr)
    tags = [messages.tag_of(cls) for cls in messages.registered()]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("wire, expected", [
    ({"action": "log"}, "malformed worker message: expected a tuple (tag, fields...), "
                        "got {'action': 'log'}"),
    ((), "malformed worker message: expected a tuple (tag, fields...), got ()"),
    (["log", 20, "n", "m", 1.0], "malformed worker message: expected a tuple"),
    (("no_such_message", 1), "unknown worker message 'no_such_message'"),
    ((3,), "unknown worker message 3"),
    (("build",), "'build' is not a worker message"),
    (("log", 20, "n"), "malformed worker message 'log': 2 field(s), expected 4 "
                       "(levelno, name, message, created)"),
    (("get_device_db", 1), "malformed worker message 'get_device_db': 1 field(s), "
                           "expected 0 (none)"),
    (("get_dataset", 5), "malformed worker message 'get_dataset': key must be str, "
                         "got 5 (int)"),
    (("set_progress", "3", None, "", 1.0),
     "malformed worker message 'set_progress': done must be float, got '3' (str)"),
    (("submit", "main", ["not", "a", "dict"], 0, None, False),
     "malformed worker message 'submit': expid must be dict[str, Any], got "
     "['not', 'a', 'dict'] (list)"),
    (("log", 20, "n", "x" * 500, "never"), "malformed worker message 'log': created "
                                          "must be float, got 'never' (str)"),
])
def test_what_is_not_a_message_is_refused_in_one_line(wire, expected):
    with pytest.raises(MalformedMessage) as caught:
        decode(wire, FROM_WORKER)
    text = str(caught.value)
    assert text.startswith(expected)
    assert "\n" not in text and len(text) < 200


def test_a_malformed_message_of_a_known_tag_names_its_kind():
    with pytest.raises(MalformedMessage) as caught:
        decode(("get_dataset", 5), FROM_WORKER)
    assert caught.value.kind is messages.GetDataset
    with pytest.raises(MalformedMessage) as caught:
        decode(("nothing",), FROM_WORKER)
    assert caught.value.kind is None


def test_numpy_numbers_are_numbers():
    numpy = pytest.importorskip("numpy")
    msg = decode(("set_progress", numpy.int64(3), numpy.float32(10), "", 1.0), FROM_WORKER)
    assert msg == messages.SetProgress(3, 10.0, "", 1.0)
    with pytest.raises(MalformedMessage, match="flush must be bool"):
        decode(("submit", "main", {}, 0, None, numpy.int64(1)), FROM_WORKER)


def test_only_messages_encode():
    with pytest.raises(TypeError, match="not a worker or examiner message: dict"):
        encode({"action": "log"})


# --- the master's dispatch tables --------------------------------------------------

def test_a_table_refuses_a_second_handler_and_what_the_worker_never_asks():
    table = Handlers().on(messages.GetStatus, lambda m: {})
    with pytest.raises(ValueError, match="GetStatus has a handler already"):
        table.on(messages.GetStatus, lambda m: {})
    for kind in (messages.Build, messages.Completed, messages.Examine, dict):
        with pytest.raises(ValueError, match="is not a worker request or one-way"):
            Handlers().on(kind, lambda m: None)


def test_tables_compose_explicitly():
    scheduler = Handlers().on(messages.CheckPause, lambda m: False)
    services = (Handlers().on(messages.GetDataset, lambda m: (False, 1, {}))
                .on(messages.Log, lambda m: None))
    merged = services.merged(scheduler)
    assert merged.kinds() == {messages.CheckPause, messages.GetDataset, messages.Log}
    assert services.kinds() == {messages.GetDataset, messages.Log}  # unchanged
    with pytest.raises(ValueError, match="handled twice: CheckPause"):
        merged.merged(scheduler)
    assert merged.only(messages.Log, messages.Submit).kinds() == {messages.Log}
    assert messages.Submit in merged.missing()
    assert messages.Log not in merged.missing()
    assert not any(issubclass(k, messages.Outcome) for k in merged.missing())


async def test_the_master_answers_everything_a_run_and_a_dry_run_may_send():
    from labpipe.master.dry_run import _handlers as dry_run_handlers
    from labpipe.master.run import Run
    with tempfile.TemporaryDirectory() as root:
        async with running_master(Lab(root)) as master:
            scheduler = master.scheduler
            run = Run(rid=1, pipeline_name="main", expid={}, priority=0, due_date=None,
                      flush=False, schedule=scheduler.notifier, state_changed=None)
            table = scheduler.worker_handlers(run).merged(scheduler.run_handlers(run))
            assert table.missing() == []
            # a dry run submits, deletes and terminates nothing, and sends nothing to
            # the Dask cluster: those are refused
            assert set(dry_run_handlers(scheduler).missing()) == {
                messages.Submit, messages.Delete, messages.RequestTermination,
                messages.GetDaskScheduler}


# --- a real worker and a real master ------------------------------------------------

def _next_outcome(conn):
    """The next message a worker sends (one batch of one), decoded."""
    assert conn.poll(60), "the worker did not answer"
    [wire] = conn.recv()
    return decode(wire, FROM_WORKER)


def test_a_worker_answers_a_malformed_or_misplaced_command_in_one_line():
    process, conn = session_launcher.start_worker()  # child.main, from the template
    output = receive_output_fd(conn)
    try:
        conn.send(("no_such_command", 1))
        assert _next_outcome(conn) == messages.Failed(
            "unknown master message 'no_such_command'", "")
        conn.send(("resume", "yes"))
        assert _next_outcome(conn) == messages.Failed(
            "malformed master message 'resume': terminate must be bool, got 'yes' (str)",
            "")
        conn.send(encode(messages.Reply(1)))  # no request is waiting for it
        assert _next_outcome(conn) == messages.Failed("unexpected command 'reply'", "")
        conn.send(encode(messages.Prepare()))
        failed = _next_outcome(conn)
        assert failed.message == "RuntimeError: no experiment was built in this worker"
        assert "Traceback" in failed.traceback
        conn.send(encode(messages.Terminate()))
        process.join(30)
        assert process.exitcode == 0
    finally:
        if process.exitcode is None:
            process.kill()
            process.join(5)
        conn.close()
        os.close(output)


HOSTILE = """
from labpipe.worker import messages

class Hostile(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        channel = self.scheduler._channel
        try:
            channel.request(messages.GetDataset(5))  # a key that is no string
        except Exception as e:
            self.set_dataset("refused", f"{type(e).__name__}: {e}", broadcast=True)
        channel._outbox.put(("no_such_message", 1))  # past the encoding
        self.set_dataset("still_answered", self.scheduler.check_pause(), broadcast=True)
"""


async def test_a_master_refuses_malformed_worker_messages_and_the_run_goes_on():
    with tempfile.TemporaryDirectory() as root:
        lab = Lab(root)
        lab.experiment("hostile", HOSTILE)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("labpipe.worker.handle")
        logger.addHandler(handler)
        try:
            async with running_master(lab) as master:
                ends = run_ends(master.scheduler)
                rid = await master.scheduler.submit(
                    "main", {"file": "repository/hostile.py", "class_name": None,
                             "arguments": {}, "log_level": 30})
                await wait_until(lambda: rid in ends, timeout=60)
                assert ends[rid].status == "completed", ends[rid]
                datasets = master.dataset_db.data.raw_view
                assert datasets["refused"][1] == (
                    "RequestFailed: malformed worker message 'get_dataset': key must be "
                    "str, got 5 (int)")
                assert datasets["still_answered"][1] is False
        finally:
            logger.removeHandler(handler)
        lines = [r.getMessage() for r in records]
        assert f"RID {rid}: unknown worker message 'no_such_message'" in lines
        assert (f"RID {rid}: malformed worker message 'get_dataset': key must be str, "
                f"got 5 (int)") in lines
