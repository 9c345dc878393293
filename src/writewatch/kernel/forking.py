"""Forks of this process: which ``os.fork()`` calls are writewatch's own, how many others
there were, and what runs in a child (CPython's ``os.register_at_fork`` hooks).

A fork()ed child inherits every descriptor, among them userfaultfd and pagemap descriptors
bound to the *parent's* address space (fs/userfaultfd.c ``ctx->mm``, fs/proc/task_mmu.c
pagemap_open); its copies also keep the parent's userfaultfd contexts alive after the parent
is gone. The hooks registered with :func:`in_child` close them there.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

__all__ = ["in_child", "internal", "others"]

_state = threading.local()
_count = [0]
_child_hooks: list[Callable[[], None]] = []


@contextlib.contextmanager
def internal() -> Iterator[None]:
    """Around an ``os.fork()`` writewatch makes for itself (the attach helper, a launched
    program before its exec): its child writes no tracked memory, so it is not counted."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def others() -> int:
    """How many times this process forked outside writewatch (``os.fork()`` only; C code
    calling fork() directly runs no hooks)."""
    return _count[0]


def in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every fork()ed child, first thing."""
    _child_hooks.append(hook)


def _after_in_parent() -> None:
    if not getattr(_state, "depth", 0):
        _count[0] += 1


def _after_in_child() -> None:
    for hook in _child_hooks:
        with contextlib.suppress(Exception):
            hook()


os.register_at_fork(after_in_parent=_after_in_parent, after_in_child=_after_in_child)
