"""An example bluesky plan: scan the simulated motor and read the detector.

``motor`` and ``det`` are ophyd devices from ``device_db.py`` (``det`` peaks where the
motor is at 0). The points appear live in the datasets ``bluesky.primary.motor`` and
``bluesky.primary.det``, and the documents in the results file under ``bluesky/``.
"""

from bluesky.plans import scan

from labpipe.experiment import *


class Scan(EnvExperiment):
    """Motor scan (bluesky)"""

    def build(self):
        self.setattr_device("motor")
        self.setattr_device("det")
        self.setattr_argument("start", NumberValue(-3.0, scale=1, unit="mm"))
        self.setattr_argument("stop", NumberValue(3.0, scale=1, unit="mm"))
        self.setattr_argument("points", NumberValue(13, min=2, max=1001, step=1,
                                                    precision=0, type="int"))

    def run(self):
        self.uids = self.run_plan(scan([self.det], self.motor, self.start, self.stop,
                                       self.points), purpose="example scan")

    def analyze(self):
        motor = self.get_dataset("bluesky.primary.motor")
        det = self.get_dataset("bluesky.primary.det")
        peak = motor[max(range(len(det)), key=det.__getitem__)]
        self.set_dataset("scan.peak_position", float(peak), unit="mm", scale=1,
                         broadcast=True)
