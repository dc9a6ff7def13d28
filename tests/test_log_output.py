"""The master's stderr log handler (``labpipe.master.log_output``): the records of one
event-loop turn go out in one write, in order; a record from another thread, or with
no loop running, at once and after what was pending; ``flush`` writes what is pending."""

import asyncio
import io
import logging
import threading

from labpipe.master.log_output import TurnBufferedHandler


class Counted(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def _logger(stream):
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("test-log-output")
    logger.addHandler(handler)
    return logger, handler


async def test_one_write_per_turn_in_order_and_threads_at_once():
    stream = Counted()
    logger, handler = _logger(stream)
    for i in range(1000):
        logger.warning("line %d", i)
    assert stream.getvalue() == ""  # not yet: at the end of this turn
    await asyncio.sleep(0)
    assert stream.getvalue() == "".join(f"line {i}\n" for i in range(1000))
    assert stream.writes == 1
    logger.warning("pending")
    thread = threading.Thread(target=logger.warning, args=("from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue().endswith("pending\nfrom a thread\n")
    logger.warning("last")
    handler.flush()
    assert stream.getvalue().endswith("from a thread\nlast\n")
    await asyncio.sleep(0)
    assert stream.getvalue().count("last") == 1


def test_without_a_loop_at_once():
    stream = Counted()
    logger, _ = _logger(stream)
    logger.warning("one")
    logger.warning("two")
    assert stream.getvalue() == "one\ntwo\n"


def test_the_second_formatter_writes_what_logging_s_own_does():
    from labpipe.master.log_output import SecondFormatter
    fmt = "%(asctime)s %(levelname)s:%(name)s:%(message)s"
    ours, theirs = SecondFormatter(fmt), logging.Formatter(fmt)
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.25, 1_700_000_000.5,
                    1_800_000_000.001):
        record = logging.LogRecord("n", logging.INFO, "f", 1, "text %d", (3,), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000)
        assert ours.format(record) == theirs.format(record)
