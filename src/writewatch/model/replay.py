"""``writewatch.model.replay`` is :mod:`writewatch.lab.replay` (a name scripts import)."""

import sys

from ..lab import replay

sys.modules[__name__] = replay
