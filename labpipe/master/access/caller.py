"""Who is calling: the user and group of the RPC call that runs now.

The gate (``gate.Gate.admit``) sets ``current_caller`` for every call it admits, in the
task of the connection serving it; the scheduler reads it when it records a submission
(the run's user and group, kept in history). A run's own submissions (its
``scheduler`` device) are made as the run's caller (``Caller.of_run``).

``source`` says where the group came from: ``"certificate"`` (TLS: the client
certificate's subject), ``"client"`` (the client's ``group=``), ``"users"`` (the
``[permissions] users`` table), ``"default"`` (``default_group``), ``"run"`` (a run's
submission), or ``None`` (no group: permissions are off, or none was stated).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

__all__ = ["Caller", "current_caller", "subject_fields", "ANONYMOUS"]


@dataclass(frozen=True)
class Caller:
    """The user and group of a call (each None when unknown)."""

    user: str | None = None
    group: str | None = None
    source: str | None = None

    @classmethod
    def of_run(cls, user: str | None, group: str | None) -> Caller:
        """The caller of a run's own submissions: the run's."""
        return cls(user, group, "run")

    def describe(self) -> str:
        """``user alice (group operators)``, as a refusal names the caller."""
        who = f"user {self.user}" if self.user else "an unnamed user"
        return f"{who} (group {self.group})" if self.group else who


ANONYMOUS = Caller()

#: The caller of the RPC call running in this task (``ANONYMOUS`` outside calls).
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "labpipe_caller", default=ANONYMOUS)


def subject_fields(peercert: Any) -> dict[str, str]:
    """``{field: value}`` of a certificate's subject as ``ssl`` gives it
    (``getpeercert()["subject"]``: relative distinguished names, each a tuple of
    ``(field, value)`` pairs); the first value of a repeated field."""
    fields: dict[str, str] = {}
    subject = peercert.get("subject", ()) if isinstance(peercert, dict) else ()
    for rdn in subject:
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2:
                fields.setdefault(str(pair[0]), str(pair[1]))
    return fields
