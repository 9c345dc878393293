"""``writewatch.model.designs`` is :mod:`writewatch.lab.designs` (the experiments moved to the lab;
this name stays for the scripts that use it)."""

import sys

from ..lab import designs as _lab

sys.modules[__name__] = _lab
