"""The race explorer's parts: :mod:`.spec` (what it runs), :mod:`.pte` (a design's rules on one
page-table entry), :mod:`.machine` (the threads' atomic steps), :mod:`.search` (every
interleaving, memoised). The public face is :mod:`writewatch.lab.races`."""
