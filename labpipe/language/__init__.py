"""What experiment code uses: environment, arguments, scans, units, exceptions.

``from labpipe.experiment import *`` brings all of it in, as ``from artiq.experiment
import *`` does for ARTIQ experiments. This package imports nothing from labpipe but
``labpipe.protocol``. The helpers of ``argument_managers`` beyond the two managers stay
in that module.
"""

from labpipe.language import arguments, environment, exceptions, scans, units
from labpipe.language.argument_managers import ProcessArgumentManager, TraceArgumentManager
from labpipe.language.arguments import *
from labpipe.language.environment import *
from labpipe.language.exceptions import *
from labpipe.language.offload import offload_analyze
from labpipe.language.scans import *
from labpipe.language.units import *

# Built with += so that type checkers follow the star imports of experiment files.
__all__: list[str] = []
__all__ += exceptions.__all__
__all__ += arguments.__all__
__all__ += scans.__all__
__all__ += environment.__all__
__all__ += ["ProcessArgumentManager", "TraceArgumentManager"]
__all__ += ["offload_analyze"]
__all__ += units.__all__
