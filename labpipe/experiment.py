"""Everything an experiment file needs: ``from labpipe.experiment import *``.

The counterpart of ``artiq.experiment``: ``EnvExperiment``, the argument processors
(``NumberValue``, ``Scannable``, ...), the scans, the unit constants (``MHz``, ``us``,
...) and the exceptions; the same names as ``labpipe.language`` exports. The modules are
star-imported one by one (and ``__all__`` built with ``+=``) so that type checkers see
the names in experiment files too.
"""

from labpipe.language import arguments, environment, exceptions, scans, units
from labpipe.language.argument_managers import ProcessArgumentManager, TraceArgumentManager
from labpipe.language.arguments import *
from labpipe.language.environment import *
from labpipe.language.exceptions import *
from labpipe.language.scans import *
from labpipe.language.units import *

__all__: list[str] = []
__all__ += exceptions.__all__
__all__ += arguments.__all__
__all__ += scans.__all__
__all__ += environment.__all__
__all__ += ["ProcessArgumentManager", "TraceArgumentManager"]
__all__ += units.__all__
