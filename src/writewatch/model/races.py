"""``writewatch.model.races`` is :mod:`writewatch.lab.races` (a name scripts import);
``python -m writewatch.model.races`` runs ``writewatch model races``."""

import sys

if __name__ == "__main__":
    from ..cli.model import races_main

    raise SystemExit(races_main())

from ..lab import races

sys.modules[__name__] = races
