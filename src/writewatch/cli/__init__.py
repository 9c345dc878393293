"""Layer 6: the ``writewatch`` command. One module per subcommand, built on the public API.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; :data:`COMMANDS` lists them in the order ``--help`` shows them.
A module whose name has an underscore is the command with a dash (``foo_bar`` -> ``foo-bar``).
"""

COMMANDS: tuple[str, ...] = (
    "features",
    "run",
    "attach",
    "snapshot",
    "snapshots",
    "restore",
    "diff",
    "model",
    "exporter",
)
