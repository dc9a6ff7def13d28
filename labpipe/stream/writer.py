"""``labpipe-writer STREAM OUTPUT_FILE USER_ID REST_PORT``: writes one window of a
buffer to an HDF5 file, driven by a REST API, then exits.

STREAM is the buffer's output address (``tcp://HOST:PORT``). USER_ID -1 keeps the
current user; another id makes the writer drop to that user (its primary group, no
supplementary groups; needs root) before it creates the file, so the file is that
user's and is written with that user's rights.
Every reply is JSON ``{"state": "ok" | "error", "status": ...}``:

- ``GET /status``: the writer's state (waiting, writing, finished);
- ``POST /parameters``: a JSON object, written as attributes of ``general``;
- ``GET /statistics``: messages and rows written, errors;
- ``PUT /start_pulse_id/<id>``, ``PUT /stop_pulse_id/<id>``: the window by pulse id;
- ``PUT /start_now``, ``PUT /stop_now``: the window from now to now;
- ``GET /stop``: close the file with what is written and exit; ``GET /kill``: exit now.

Exit code 0 when the window was written whole, 1 when something of it was missing
(the reason on stderr and in the file's ``general`` attribute ``errors``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import sys
import threading
import time
from typing import Any

import h5py
from aiohttp import web

from labpipe.protocol.ports import tcp_port
from labpipe.stream.client import BufferClient, BufferError
from labpipe.stream.window import Capture


class Writer:
    """The writer process's state and its REST handlers."""

    def __init__(self, stream: str, output: str) -> None:
        self.file = h5py.File(output, "w")
        self.general = self.file.require_group("general")
        self.client = BufferClient(stream)
        self.capture = Capture(self.client, self.file)
        self.cancelled = False
        self.done = asyncio.Event()
        self.exit_code = 0
        self.started_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="labpipe-writer",
                                       daemon=True)

    def _run(self) -> None:
        try:
            self.capture.run(lambda: self.cancelled)
        except (BufferError, ValueError) as error:
            self.capture.errors.append(str(error))
        except Exception as error:  # a writer that failed never exits 0
            self.capture.errors.append(f"internal error: {error!r}")

    def state(self) -> str:
        if self.capture.finished.is_set():
            return "finished"
        return "writing" if self.capture.started.is_set() else "waiting"

    def statistics(self) -> dict[str, Any]:
        window = self.capture.window
        elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
        return {"state": self.state(), "messages": window.messages, "rows": window.rows,
                "first_pulse_id": window.first_pulse, "bytes": window.bytes,
                "bytes_per_second": window.bytes / elapsed if elapsed else 0.0,
                "incompatible_values": window.incompatible,
                "start_pulse_id": self.capture.start_pulse,
                "stop_pulse_id": self.capture.stop_pulse,
                "errors": list(self.capture.errors)}

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/status", self.get_status), web.post("/parameters", self.parameters),
            web.get("/statistics", self.get_statistics), web.get("/stop", self.stop),
            web.get("/kill", self.kill),
            web.put("/start_pulse_id/{id}", self.start_pulse_id),
            web.put("/stop_pulse_id/{id}", self.stop_pulse_id),
            web.put("/start_now", self.start_now), web.put("/stop_now", self.stop_now)])
        return app

    async def get_status(self, _: web.Request) -> web.Response:
        return ok(self.state())

    async def get_statistics(self, _: web.Request) -> web.Response:
        return ok(self.statistics())

    async def parameters(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error("the parameters are not JSON")
        if not isinstance(body, dict):
            return error("the parameters are not a JSON object")
        for key, value in body.items():
            self.general.attrs[str(key)] = (value if isinstance(value, (int, float, str))
                                            else json.dumps(value))
        return ok({"parameters": body})

    def _pulse(self, request: web.Request) -> int:
        text = request.match_info["id"]
        try:
            return int(text)
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"state": "error",
                                 "status": f"pulse id {text!r} is not an integer"}),
                content_type="application/json") from None

    async def start_pulse_id(self, request: web.Request) -> web.Response:
        pulse = self._pulse(request)
        if self.capture.started.is_set():
            return error("the window has started already")
        self.capture.start_at(pulse)
        self.started_at = time.monotonic()
        return ok(self.state())

    async def stop_pulse_id(self, request: web.Request) -> web.Response:
        pulse = self._pulse(request)
        start = self.capture.start_pulse
        if start is not None and pulse < start:
            return error(f"stop pulse id {pulse} is before the start pulse id {start}")
        if self.capture.stop_pulse is not None:
            return error("the window has its stop already")
        self.capture.stop_at(pulse)
        return ok(self.state())

    async def start_now(self, _: web.Request) -> web.Response:
        if self.capture.started.is_set():
            return error("the window has started already")
        try:
            await asyncio.to_thread(self.capture.start_now)
        except BufferError as failure:
            return error(str(failure))
        self.started_at = time.monotonic()
        return ok(self.state())

    async def stop_now(self, _: web.Request) -> web.Response:
        if not self.capture.started.is_set():
            return error("the window has not started (PUT /start_now or"
                         " /start_pulse_id/<id> first)")
        if self.capture.stop_pulse is not None:
            return error("the window has its stop already")
        try:
            await asyncio.to_thread(self.capture.stop_now)
        except BufferError as failure:
            return error(str(failure))
        return ok(self.state())

    async def stop(self, _: web.Request) -> web.Response:
        self.cancelled = True
        self.done.set()
        return ok("stopping")

    async def kill(self, _: web.Request) -> web.Response:
        self.cancelled = True
        self.exit_code = 1
        self.done.set()
        return ok("killed")


def ok(status: Any) -> web.Response:
    """A JSON reply of state ok."""
    return web.json_response({"state": "ok", "status": status})


def error(status: str) -> web.Response:
    """A JSON reply of state error (HTTP 400)."""
    return web.json_response({"state": "error", "status": status}, status=400)


async def _serve(writer: Writer, port: int) -> int:
    app = writer.app()

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            return web.json_response(
                {"state": "error", "status": f"no such call {request.method}"
                 f" {request.path}"}, status=404)
        except web.HTTPMethodNotAllowed as failure:
            return web.json_response(
                {"state": "error", "status": f"{request.path} takes"
                 f" {', '.join(sorted(failure.allowed_methods))}"}, status=405)

    app.middlewares.append(errors)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"labpipe-writer: REST API on http://127.0.0.1:{port}", flush=True)
    writer.thread.start()
    finished = asyncio.ensure_future(asyncio.to_thread(writer.capture.finished.wait))
    done = asyncio.ensure_future(writer.done.wait())
    await asyncio.wait([finished, done], return_when=asyncio.FIRST_COMPLETED)
    writer.cancelled = True
    await asyncio.to_thread(writer.thread.join, 10)
    done.cancel()
    await asyncio.gather(finished, done, return_exceptions=True)
    await runner.cleanup()
    return writer.exit_code


def user_id(text: str) -> int:
    """The USER_ID argument: -1 or a user id (argparse type)."""
    try:
        uid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a user id") from None
    if uid != -1 and not 0 <= uid < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{uid} is not a user id (-1, or 0 to"
                                         f" {2**32 - 2})")
    return uid


def become(uid: int) -> None:
    """Drop to user ``uid`` for good: its primary group (the group of the same number
    for an id without a passwd entry), no supplementary groups, then the user."""
    if uid == os.getuid() == os.geteuid():
        return
    # imported now, while the interpreter's own files are readable: Python installed
    # in root's home (pyenv) is not readable by the user dropped to, and asyncio's
    # to_thread imports its executor the first time it runs
    import concurrent.futures.thread  # noqa: F401
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        gid = uid
    os.setgroups([])  # else root's groups (0 among them) would stay with the writer
    os.setgid(gid)
    os.setuid(uid)


def _sync(path: str) -> None:
    """The file on disk before the writer says it is done (its exit)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    parser = argparse.ArgumentParser(prog="labpipe-writer",
                                     description="write a window of a stream to HDF5")
    parser.add_argument("stream", help="the buffer's output, tcp://HOST:PORT")
    parser.add_argument("output_file")
    parser.add_argument("user_id", type=user_id,
                        help="the user to write the file as; -1: the current user")
    parser.add_argument("rest_port", type=tcp_port)
    args = parser.parse_args(argv)
    if args.user_id != -1:
        try:
            become(args.user_id)
        except OSError as failure:
            parser.exit(1, f"labpipe-writer: cannot become user {args.user_id}:"
                        f" {failure.strerror}\n")
    try:
        writer = Writer(args.stream, args.output_file)
    except OSError as failure:
        # h5py's text is HDF5's whole error stack; the errno's says what was wrong
        reason = os.strerror(failure.errno) if failure.errno else str(failure)
        parser.exit(1, f"labpipe-writer: cannot create {args.output_file} as user"
                    f" {os.getuid()}: {reason}\n")
    try:
        code = asyncio.run(_serve(writer, args.rest_port))
    except OSError as failure:
        writer.file.close()
        parser.exit(1, f"labpipe-writer: REST port {args.rest_port}: {failure}\n")
    writer.general.attrs["errors"] = json.dumps(writer.capture.errors)
    writer.general.attrs["statistics"] = json.dumps(writer.statistics())
    writer.file.close()
    writer.client.close()
    _sync(args.output_file)
    if writer.capture.errors:
        print(f"labpipe-writer: {'; '.join(writer.capture.errors)}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
