"""The suite's hygiene check can fail: tests that leave a task running, leave an
exception unhandled in the event loop, drop a socket unclosed or never await a
coroutine are reported, in a separate pytest run with the suite's own configuration
(setup.cfg's asyncio mode and filterwarnings)."""

import os

pytest_plugins = ["pytester"]

HERE = os.path.dirname(os.path.abspath(__file__))

CONFTEST = f"""
import sys
sys.path.insert(0, {HERE!r})
from asyncio_hygiene import _loop_hygiene, asyncio_hygiene
"""

CASES = """
import asyncio
import socket


async def test_clean():
    await asyncio.sleep(0)


async def test_task_ending_within_the_grace_time():
    asyncio.get_running_loop().create_task(asyncio.sleep(0.2))


def test_sync_clean():
    pass


async def test_leaks_a_task():
    async def forever():
        await asyncio.Event().wait()
    asyncio.get_running_loop().create_task(forever(), name="the-leaked-task")


async def test_a_callback_raises():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)


async def test_never_awaits_a_coroutine():
    asyncio.sleep(0)


async def test_drops_a_socket_in_a_cycle():
    # only the garbage collector frees it: reported on this test all the same
    held = [socket.socket()]
    held.append(held)


def test_sync_drops_a_socket_in_a_cycle():
    held = [socket.socket()]
    held.append(held)
"""


def test_leaks_and_dropped_resources_fail_the_test(pytester, pytestconfig):
    lines = "\n    ".join(pytestconfig.getini("filterwarnings"))
    pytester.makeini(f"""
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings =
    {lines}
""")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    outcomes = {}
    for line in result.outlines:
        for outcome in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(outcome + " test_cases.py::"):
                name = line.split("::")[1].split()[0]
                outcomes.setdefault(name, []).append(outcome)
    assert outcomes == {
        "test_clean": ["PASSED"],
        "test_task_ending_within_the_grace_time": ["PASSED"],
        "test_sync_clean": ["PASSED"],
        "test_leaks_a_task": ["PASSED", "ERROR"],
        "test_a_callback_raises": ["PASSED", "ERROR"],
        "test_never_awaits_a_coroutine": ["FAILED"],
        "test_drops_a_socket_in_a_cycle": ["PASSED", "ERROR"],
        "test_sync_drops_a_socket_in_a_cycle": ["PASSED", "ERROR"],
    }, result.stdout.str()
    output = result.stdout.str()
    assert "left 1 asyncio task(s) running" in output
    assert "the-leaked-task: test_leaks_a_task.<locals>.forever waiting at" in output
    assert "the event loop reported what nobody handled:" in output
    assert "Exception in callback" in output and "ZeroDivisionError" in output
    assert "coroutine 'sleep' was never awaited" in output
    assert "unclosed <socket.socket" in output
