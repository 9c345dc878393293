"""How the ``writewatch`` command loads numpy; imported first by the package.

numpy's OpenBLAS starts one thread per CPU when it loads, and they spin before they sleep:
0.05-0.1 s of CPU in a command that does no linear algebra (a third of its start-up). The
command alone loads it with one thread (OpenBLAS reads the variable once, at load: its
``gotoblas_init``); the variable is removed again at once, so that the programs the command
launches see the environment they were given. A value the user set is left alone, and a
program that imports the package gets numpy as it would without it.
"""

from __future__ import annotations

import itertools
import os
import sys

VARIABLE = "OPENBLAS_NUM_THREADS"


def is_the_command(argv0: str, orig_argv: list[str]) -> bool:
    """Whether this process is the ``writewatch`` command (the console script or
    ``python -m writewatch``), not a program that imports the package."""
    if os.path.basename(argv0) == "writewatch":
        return True
    return any(a == "-m" and b in ("writewatch", "writewatch.cli")
               for a, b in itertools.pairwise(orig_argv))


if "numpy" not in sys.modules and VARIABLE not in os.environ and \
        is_the_command(sys.argv[0], sys.orig_argv):
    os.environ[VARIABLE] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        del os.environ[VARIABLE]
