"""The last module the worker template (``forkserver.py``) imports: it readies the template.

Importing it initialises HDF5 once (the first file a fresh process writes otherwise
costs it milliseconds) and then moves every object the template holds out of the
garbage collector's reach (``gc.freeze``): a forked worker's collections then never
touch, and so never copy, the template's memory pages.
"""

import gc

import h5py

__all__ = []


def _warm_up_hdf5() -> None:
    with h5py.File("labpipe-warm-up", "w", driver="core", backing_store=False) as f:
        f["x"] = 0
        f.create_dataset("s", data="x", dtype=h5py.string_dtype())


_warm_up_hdf5()
gc.collect()
gc.freeze()
