"""The gate's table covers every method of the control port (docs/access.md)."""

from labpipe.master.access.gate import ACTIONS, READS
from labpipe.master.access.permissions import RIGHTS
from labpipe.master.targets import SPECS


def test_every_method_is_a_change_or_a_read():
    methods = {f"{target}.{name}" for target, specs in SPECS.items() for name in specs}
    unclassified = sorted(methods - set(ACTIONS) - READS)
    assert not unclassified, f"name these in access.gate.ACTIONS or READS: {unclassified}"
    assert not set(ACTIONS) & READS


def test_actions_name_known_scopes_and_rights():
    for label, action in ACTIONS.items():
        assert action.scope in (None, "queue", "environment"), label
        assert action.right is None or action.right in RIGHTS, label
