"""``writewatch.model.fidelity`` is :mod:`writewatch.lab.fidelity` (a name scripts import)."""

import sys

from ..lab import fidelity

sys.modules[__name__] = fidelity
