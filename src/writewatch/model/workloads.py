"""``writewatch.model.workloads`` is :mod:`writewatch.lab.workloads` (the experiments moved to the
lab; this name stays for the scripts that use it)."""

import sys

from ..lab import workloads as _lab

sys.modules[__name__] = _lab
