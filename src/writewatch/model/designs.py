"""``writewatch.model.designs`` is :mod:`writewatch.lab.designs` (a name scripts import)."""

import sys

from ..lab import designs

sys.modules[__name__] = designs
