"""``python -m labpipe.master``: the same as ``labpipe-master``.

Workers started by multiprocessing skip re-running a main module named ``*.__main__``,
so this is also the cheapest way to start a master.
"""

from labpipe.master.main import main

if __name__ == "__main__":
    main()
