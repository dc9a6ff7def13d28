"""labpipe's command-line clients: ``labpipe-client`` (``main``) and ``labpipe-run``
(``run``).

Both import numpy (through the protocol's and the language's modules), and numpy starts
OpenBLAS's threads when it is imported. The kernel hands a process's SIGINT to any thread
that does not block it: given to one of those, Ctrl-C did not interrupt the main
thread's sleep or blocking read (an experiment's ``time.sleep(60)`` under
``labpipe-run``, ``show schedule --watch`` waiting for the next mod). So numpy is
imported here, first, with the terminating signals blocked: its threads are born
blocking them, and they always reach the main thread.
"""

import signal

_TO_MAIN_THREAD = {signal.SIGINT, signal.SIGTERM}
_previous = signal.pthread_sigmask(signal.SIG_BLOCK, _TO_MAIN_THREAD)
try:
    import numpy  # noqa: F401
finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, _previous)
