"""Who may change what: the queue lock and the users, groups and permissions.

- ``caller``: who is calling (``Caller``: user, group, where the group came from) and
  the ``current_caller`` of the call running now.
- ``lock``: the lock (``QueueLock``: key, scope, note, who, when; on disk before the
  reply) and its ``lock`` RPC target and notifier.
- ``permissions``: the ``[permissions]`` section of ``labpipe.toml`` (groups, patterns,
  rights) and the ``permissions`` RPC target.
- ``gate``: the table of every changing method (``ACTIONS``) and the ``Gate`` that each
  ``targets.Target`` call passes: the lock first, then the group's rights.

See ``docs/access.md``.
"""
