"""``python -m labpipe.master``: the same as ``labpipe-master``.

The benchmarks and tests start masters this way.
"""

from labpipe.master.main import main

if __name__ == "__main__":
    main()
