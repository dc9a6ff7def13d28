"""The fields of a submission: the keys an expid may have, and the checks of ``submit``'s
arguments that ``schedule.submit`` and the dry run (``schedule.validate``) share.

Pure: imports nothing of the master, so both the scheduler and ``dry_run`` import it.
"""

import logging
import math
import numbers

__all__ = ["EXPID_KEYS", "validate_submission"]

#: The keys an expid may have.
EXPID_KEYS = frozenset({"file", "class_name", "arguments", "log_level", "repo_rev",
                        "content", "devarg_override"})


def validate_submission(pipeline_name: object, expid: object, priority: object,
                        due_date: object, flush: object) -> None:
    """Refuse a malformed submission with a clear ValueError/TypeError naming the field."""
    if not isinstance(pipeline_name, str) or not pipeline_name:
        raise ValueError("pipeline_name must be a non-empty string")
    if not isinstance(expid, dict):
        raise TypeError(f"expid must be a dict, not {type(expid).__name__}")
    unknown = set(expid) - EXPID_KEYS
    if unknown:
        raise ValueError(f"unknown expid keys {sorted(unknown)}; valid: {sorted(EXPID_KEYS)}")
    if expid.get("content") is None and not isinstance(expid.get("file"), str):
        raise ValueError("expid needs a 'file' (a path) or a 'content' (the source text)")
    if expid.get("content") is not None and not isinstance(expid["content"], str):
        raise TypeError("expid 'content' must be a string")
    if expid.get("class_name") is not None and not isinstance(expid["class_name"], str):
        raise TypeError("expid 'class_name' must be a string or None")
    if not isinstance(expid.get("arguments", {}), dict):
        raise TypeError("expid 'arguments' must be a dict")
    if not isinstance(expid.get("log_level", logging.WARNING), int):
        raise TypeError("expid 'log_level' must be an integer")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError("priority must be an integer")
    if due_date is not None and (isinstance(due_date, bool)
                                 or not isinstance(due_date, numbers.Real)):
        raise TypeError("due_date must be a UNIX time (a number) or None")
    if due_date is not None and not math.isfinite(due_date):
        raise ValueError(f"due_date must be a finite UNIX time or None, not {due_date}")
    if not isinstance(flush, bool):
        raise TypeError("flush must be a boolean")
