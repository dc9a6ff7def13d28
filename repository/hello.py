"""An example experiment: arguments, datasets, progress through the scheduler."""

import time

import numpy as np

from labpipe.experiment import *


class Hello(EnvExperiment):
    """Hello, lab"""

    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("points", NumberValue(20, min=1, max=1000, step=1,
                                                    precision=0, type="int"))
        self.setattr_argument("delay", NumberValue(0.05, unit="s", min=0.0, max=5.0))
        self.setattr_argument("greeting", StringValue("Hello, lab"))

    def prepare(self):
        self.x = np.linspace(0, 1, self.points)

    def run(self):
        print(self.greeting)
        self.set_dataset("hello.signal", np.full(self.points, np.nan), broadcast=True)
        for i, x in enumerate(self.x):
            self.mutate_dataset("hello.signal", i, np.sin(2 * np.pi * x))
            self.scheduler.pause()
            time.sleep(self.delay)

    def analyze(self):
        signal = self.get_dataset("hello.signal")
        self.set_dataset("hello.peak", float(np.nanmax(signal)), broadcast=True)
