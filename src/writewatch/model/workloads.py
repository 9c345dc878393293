"""``writewatch.model.workloads`` is :mod:`writewatch.lab.workloads` (a name scripts import)."""

import sys

from ..lab import workloads

sys.modules[__name__] = workloads
