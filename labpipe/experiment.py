"""Everything an experiment file needs: ``from labpipe.experiment import *``.

The counterpart of ``artiq.experiment``: ``EnvExperiment``, the argument processors
(``NumberValue``, ``Scannable``, ...), the scans, the unit constants (``MHz``, ``us``,
...) and the exceptions. See ``labpipe.language`` for the details.
"""

from labpipe import language
from labpipe.language import *

__all__ = list(language.__all__)
