"""``writewatch.model.races`` is :mod:`writewatch.lab.races` (the experiments moved to the lab;
this name stays for the scripts that use it)."""

import sys

if __name__ == "__main__":  # python -m writewatch.model.races: the CLI's subcommand
    from ..cli.model import races_main

    raise SystemExit(races_main())

from ..lab import races as _lab

sys.modules[__name__] = _lab
