"""The check every test of the suite goes through (conftest imports its fixtures).

pytest-asyncio runs each async test in an event loop of its own (setup.cfg:
``asyncio_mode = auto``). Once an async test and all its fixtures are done, in that
loop, ``asyncio_hygiene`` fails the test if asyncio tasks are still running (naming
each with the line it waits at) or if the loop reported an exception nobody handled
(a task's exception never retrieved, an exception in a callback: asyncio only logs
those). After every test it collects garbage, so that what the test dropped unclosed
(a socket, a transport, a subprocess still running, a coroutine never awaited:
setup.cfg's ``filterwarnings`` make those warnings errors) is reported on this test,
not on whichever test runs when the collector next passes.
"""
import asyncio
import gc
import time

import pytest
from pytest_asyncio import is_async_test

#: How long tasks may take to end once the test and its fixtures are done: a
#: connection handler may still be in its last closing steps when a server's stop
#: returned.
TASK_GRACE = 2.0


@pytest.fixture(autouse=True)
def asyncio_hygiene(request):
    """Every test: nothing left for the garbage collector; an async test: no task left
    running and no exception left unhandled either."""
    if is_async_test(request.node):
        # set up before the test's other fixtures, so torn down after all of them
        request.getfixturevalue("_loop_hygiene")
        yield
    else:
        yield
        collect_garbage()


@pytest.fixture
async def _loop_hygiene():
    loop = asyncio.get_running_loop()
    reports: list[dict] = []

    def record(loop, context):
        reports.append(context)
        loop.default_exception_handler(context)  # logged as ever
    loop.set_exception_handler(record)
    yield
    this = asyncio.current_task()
    left = lambda: [t for t in asyncio.all_tasks() if t is not this]
    deadline = time.monotonic() + TASK_GRACE
    while left() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    tasks = left()
    described = [describe_task(t) for t in tasks]
    if tasks:  # ended here, not in a later test's report
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=TASK_GRACE)
    collect_garbage()
    problems = []
    if tasks:
        problems.append(f"the test left {len(tasks)} asyncio task(s) running "
                        f"{TASK_GRACE} s after its end:\n" + "\n".join(described))
    if reports:
        problems.append("the event loop reported what nobody handled:\n" + "\n".join(
            f"  {c.get('message')}: {c.get('exception')!r}" for c in reports))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def collect_garbage() -> None:
    """Free what the test dropped in reference cycles now (their ResourceWarnings go
    to this test), then freeze what is left: the next test's collection looks only at
    what it allocated (a full one takes 50-130 ms with numpy, h5py and bluesky loaded,
    for each of some 700 tests)."""
    gc.collect()
    gc.freeze()


def describe_task(task: asyncio.Task) -> str:
    """A task's name, its coroutine and the line it waits at."""
    stack = task.get_stack()
    where = (f" waiting at {stack[-1].f_code.co_filename}:{stack[-1].f_lineno}"
             if stack else "")
    coro = task.get_coro()
    return f"  {task.get_name()}: {getattr(coro, '__qualname__', coro)}{where}"
