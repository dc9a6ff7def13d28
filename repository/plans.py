"""Bluesky plans as experiments: each plan below is listed in explist and can be
submitted by name, its devices given as device_db keys (e.g. ``detectors=["det"]``).

``__plans__`` turns plans defined elsewhere (here bluesky's own ``count`` and ``scan``)
into experiments; ``@plan_experiment`` does it for a plan defined here. Both stay plans:
``yield from peak_scan(...)`` still works in other plans.
"""

from bluesky.plans import count, scan  # noqa: F401 (count is named in __plans__)
from bluesky.protocols import Movable, Readable

from labpipe.bluesky.plans import experiments_from_plans, plan_experiment


@plan_experiment
def peak_scan(detectors: list[Readable], motor: Movable, start: float = -3.0,
              stop: float = 3.0, num: int = 13):
    """Scan a motor over a peak"""
    return (yield from scan(detectors, motor, start, stop, num))


__plans__ = ["count", "scan"]
experiments_from_plans(globals())
