"""``writewatch.model.replay`` is :mod:`writewatch.lab.replay` (the experiments moved to the lab;
this name stays for the scripts that use it)."""

import sys

from ..lab import replay as _lab

sys.modules[__name__] = _lab
