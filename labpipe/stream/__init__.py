"""Always-on stream buffer and windowed HDF5 writer for bsread streams.

``wire``: the bsread message format; ``ring``: the preallocated per-channel ring;
``sim``, ``buffer``, ``writer``: the three console scripts; ``client``: what an
experiment's ``setattr_stream`` uses.
"""
