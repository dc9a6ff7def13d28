"""The ARTIQ-compatible wire protocols (our own implementation of sipyco's).

One protocol per module: ``pyon`` (value encoding), ``rpc`` (control port), ``sync``
(notify port), ``broadcast`` (broadcast port), ``logs`` (logging port); ``server`` is the
TCP server base they share. This package imports nothing else from labpipe.
"""
