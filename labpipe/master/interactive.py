"""Interactive arguments: a running experiment asks the users for values.

A worker's ``interactive`` request appears in the ``interactive_args`` notifier
(``{rid: {"title", "arglist_desc"}}``) and waits until a client calls ``supply(rid,
values)`` or ``cancel(rid)`` on the ``interactive_arg_db`` target. Deleting or
terminating the run cancels its request. Supplied values are checked against the
request's descriptions before the run gets them (``argcheck.check_interactive``: names,
values in the argument's unit, arguments without default left out); refused values
leave the request waiting.
"""

import asyncio
from typing import Any

from labpipe.master.argcheck import ArgumentRefused, check_interactive
from labpipe.protocol.sync import Notifier

__all__ = ["InteractiveArgDB"]


class InteractiveArgDB:
    """The ``interactive_arg_db`` RPC target and its notifier."""

    def __init__(self) -> None:
        self.notifier = Notifier({})
        self._futures: dict[int, asyncio.Future[dict[str, Any] | None]] = {}

    async def request(self, rid: int, title: str,
                      arglist_desc: list[Any]) -> dict[str, Any] | None:
        """Publish a request for run rid and wait for the values (None when cancelled)."""
        if rid in self._futures:
            raise RuntimeError(f"RID {rid} already waits for interactive arguments")
        future = asyncio.get_running_loop().create_future()
        self._futures[rid] = future
        self.notifier[rid] = {"title": title, "arglist_desc": arglist_desc}
        try:
            return await future
        finally:
            del self._futures[rid]
            del self.notifier[rid]

    def supply(self, rid: int, values: dict[str, Any]) -> None:
        """Give run rid the values of its interactive arguments ({key: value}); values
        its request refuses are refused (ValueError), and it keeps waiting."""
        if not isinstance(values, dict):
            raise TypeError("values must be a dict {argument: value}")
        future = self._pending(rid)
        try:
            check_interactive(self.notifier.raw_view[rid]["arglist_desc"], values)
        except ArgumentRefused as e:
            raise ValueError(f"RID {rid}: {e}") from None
        future.set_result(values)

    def cancel(self, rid: int) -> None:
        """Cancel run rid's request: the experiment gets CancelledArgsError."""
        self._pending(rid).set_result(None)

    def cancel_if_pending(self, rid: int) -> None:
        """Cancel run rid's request if it has one (on deletion or termination)."""
        future = self._futures.get(rid)
        if future is not None and not future.done():
            future.set_result(None)

    def _pending(self, rid: int) -> asyncio.Future[dict[str, Any] | None]:
        future = self._futures.get(rid)
        if future is None or future.done():
            # ValueError as ARTIQ's master raises: clients may catch it by type
            raise ValueError(f"RID {rid} is not waiting for interactive arguments")
        return future
