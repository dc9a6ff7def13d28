"""labpipe: a headless experiment master for physics labs, wire-compatible with ARTIQ."""

__version__ = "0.1.0"
