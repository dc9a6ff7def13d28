"""Everything an experiment file needs: ``from labpipe.experiment import *``.

The counterpart of ``artiq.experiment``: ``EnvExperiment``, the argument processors
(``NumberValue``, ``Scannable``, ...), the scans, the unit constants (``MHz``, ``us``,
...) and the exceptions; exactly the names ``labpipe.language`` exports. ``__all__`` is
built with ``+=`` from ``language.__all__`` (itself built so) so that type checkers see
the names in experiment files too.
"""

from labpipe import language
from labpipe.language import *

__all__: list[str] = []
__all__ += language.__all__
