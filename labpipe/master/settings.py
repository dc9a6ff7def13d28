"""The master's settings from ``labpipe.toml``, under its command-line flags.

``labpipe-master`` reads the lab's file before it parses its command line; the file's
``[ports]`` and ``[master]`` values become the defaults of the matching options
(``--port-*``, ``--bind``, ``--ssl``, ``--dask-scheduler``), so a flag given on the command line wins and
``--help`` shows the lab's values. ``[master] hold`` has no flag: the master applies it
at start (``Master.start``).
"""

import argparse
from collections.abc import Sequence

from labpipe.config import LabConfig

__all__ = ["parse_args"]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               config: LabConfig) -> argparse.Namespace:
    """The command line parsed with the file's values as defaults; the namespace also
    carries the configuration itself (``lab_config``)."""
    defaults: dict[str, object] = {"lab_config": config}
    for name in ("control", "notify", "logging", "broadcast"):
        port = getattr(config.ports, name)
        if port is not None:
            defaults[f"port_{name}"] = port
    if config.master.dask_scheduler is not None:
        defaults["dask_scheduler"] = config.master.dask_scheduler
    tls = config.master.tls
    if tls is not None:
        defaults["ssl"] = [tls.cert, tls.key, tls.peer]
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    # --bind appends (repeatable): a default list would be appended to, not replaced
    if args.bind is None and config.master.bind is not None:
        args.bind = list(config.master.bind)
    return args
