"""What the control port exposes: exactly the listed methods of each master object.

The RPC server calls any public callable of a target, so the master never registers its
internal objects themselves (a client could otherwise call ``Scheduler.stop`` or
``DatasetDB.close``); it registers a ``Target`` that forwards only the methods of
wire-compat.md and labpipe's documented additions.
"""

__all__ = ["Target", "SCHEDULE_METHODS", "DATASET_DB_METHODS", "INTERACTIVE_ARG_DB_METHODS"]

#: ARTIQ's schedule methods, then labpipe's (plans, queue control, dry runs).
SCHEDULE_METHODS = ("submit", "delete", "request_termination", "get_status", "check_pause",
                    "check_termination", "submit_plan", "change", "hold", "release",
                    "set_device_check", "validate")
DATASET_DB_METHODS = ("get", "get_metadata", "set", "update", "delete")
INTERACTIVE_ARG_DB_METHODS = ("supply", "cancel")


class Target:
    """An RPC target forwarding exactly ``methods`` of ``obj`` (with their signatures
    and docstrings, for ``get_rpc_method_list``)."""

    def __init__(self, obj, methods, doc: str | None = None):
        for name in methods:
            setattr(self, name, getattr(obj, name))
        self.__doc__ = doc if doc is not None else type(obj).__doc__
