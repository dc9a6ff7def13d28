"""Simulated devices for the example device database (``device_db.py``).

Most ophyd.sim devices are built from plain keyword arguments and need nothing here.
The few that need another device, such as ``ophyd.sim.SynGauss`` (a detector whose
reading depends on a motor), get a thin ARTIQ-style wrapper: its constructor takes the
device manager first and looks the other device up by its key.
"""

from __future__ import annotations

from typing import Any

from ophyd.sim import SynGauss

__all__ = ["MotorGauss"]


class MotorGauss(SynGauss):
    """``ophyd.sim.SynGauss`` peaked on a motor named by its device database key.

    Device database entry::

        "det": {"type": "local", "module": "labpipe.worker.sim", "class": "MotorGauss",
                "arguments": {"name": "det", "motor": "motor", "center": 0.0, "Imax": 1.0}}

    ``name`` must be given (the device manager passes no name to ARTIQ-style classes);
    ``motor_field`` defaults to the motor's readback name; other keyword arguments
    (``sigma``, ``noise``, ``noise_multiplier``, ...) go to ``SynGauss``.
    """

    def __init__(self, dmgr: Any, name: str, motor: str, center: float = 0.0,
                 Imax: float = 1.0, motor_field: str | None = None, **kwargs: Any):
        motor_device = dmgr.get(motor)
        if motor_field is None:
            motor_field = motor_device.readback.name
        super().__init__(name, motor_device, motor_field, center, Imax, **kwargs)
