"""labpipe-web: a web dashboard that is a client of a master over its wire protocols
(notifiers, RPC, broadcasts) only; see ``server.py``."""
