"""``writewatch.model.fidelity`` is :mod:`writewatch.lab.fidelity` (the experiments moved to the
lab; this name stays for the scripts that use it)."""

import sys

from ..lab import fidelity as _lab

sys.modules[__name__] = _lab
