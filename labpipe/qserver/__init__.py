"""bluesky-queueserver's RE Manager 0MQ API, served by a labpipe master.

``labpipe-master --qserver`` (or ``[qserver] enabled = true`` in ``labpipe.toml``) opens
the control socket (0MQ REP, default ``tcp://127.0.0.1:60615``: JSON requests
``{"method": ..., "params": {...}}``, JSON replies with ``success`` and ``msg``) and the
info socket (0MQ PUB, default ``tcp://127.0.0.1:60625``, topic ``QS_Console``: the
master's log lines as ``{"time", "msg"}``), so that ``qserver`` and ``REManagerAPI``
drive the master. One pipeline (default ``main``) is "the queue".

Modules: ``endpoint`` (the sockets and their lifetime), ``handlers`` (one function
per method, its parameters checked first), ``adapter`` (every call onto the master, in
one place), ``access`` (the lock, users and groups: the master's own), ``items``
(labpipe runs and history records as queue items), ``state`` (the little the endpoint
keeps on disk itself).
"""
