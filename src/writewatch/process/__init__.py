"""Layer 4: tracking other processes — one, several, or a whole tree of them.

A userfaultfd acts on the mm of the process that created it, so one is created inside each
target by syscall injection (:func:`writewatch.kernel.inject.steal_userfaultfd`), a copy is
taken with ``pidfd_getfd``, and — while the target is still stopped — every writable mapping
of ``/proc/PID/maps`` is registered and armed from here (UFFDIO_REGISTER and PAGEMAP_SCAN act
on the mm of the descriptor's creator, whoever calls them). Collects go through
``/proc/PID/pagemap``.

* :mod:`.member` — one process: its backend, mappings as they change, exec, exit;
* :mod:`.shared` — memory shared between processes, as one object;
* :mod:`.forks` — following forks with ``UFFD_FEATURE_EVENT_FORK``;
* :mod:`.tree` — :class:`ProcessTracker` and :func:`attach`;
* :mod:`.launch` — :func:`launch`.
"""

from __future__ import annotations

from .launch import LaunchedProcess, launch
from .mappings import MappingInfo, trackable
from .tree import ProcessCollectInfo, ProcessTracker, attach

__all__ = ["LaunchedProcess", "MappingInfo", "ProcessCollectInfo", "ProcessTracker", "attach",
           "launch", "trackable"]
