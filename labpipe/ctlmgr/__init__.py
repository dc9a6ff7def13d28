"""labpipe-ctlmgr: the controller manager, one per host, running that host's controllers.

A client of the master over the wire only (the ``devices`` notifier and the logging
port), like ARTIQ's ``artiq_ctlmgr``: ``entries`` picks this host's controllers out of
the device database, ``controller`` runs one of them (process group, output forwarded,
pings, restarts with backoff, escalating stop), ``manager`` follows the master and keeps
the running set equal to the database, ``main`` is the command line.
"""
