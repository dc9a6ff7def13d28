"""``python -m labpipe.ctlmgr``: the same as ``labpipe-ctlmgr``."""

from labpipe.ctlmgr.main import main

if __name__ == "__main__":
    main()
