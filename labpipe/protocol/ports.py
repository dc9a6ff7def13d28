"""TCP port numbers as command lines take them.

``tcp_port`` is an ``argparse`` type: an integer from 0 (the system picks a free port)
to 65535, else one clear error line naming the value. ZeroMQ takes a larger number
without a word and binds it modulo 65536 (``99999`` becomes port 34463), and asyncio
reports it only when it binds, so every labpipe command checks its ports here first.
"""

import argparse

__all__ = ["tcp_port"]


def tcp_port(text: str) -> int:
    """An argparse type: the port number in text (0 to 65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0 to 65535)")
    return port
