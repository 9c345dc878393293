"""What a child's address space inherits at fork (kernel/fork.c dup_mmap).

* private VMAs' entries are copied, both sides' anon PTEs read-only (copy_present_pte, COW);
  shared VMAs are not copied (faulted lazily in the child);
* without UFFD_FEATURE_EVENT_FORK the child's VMAs lose the uffd context and the copied
  entries the bit and markers (dup_userfaultfd); with it the child gets a context of its own
  (dup_userfaultfd_complete sends UFFD_EVENT_FORK) and keeps both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _uapi as U
from .pte import ANON, MARKER, NONE, PRESENT, RW, WP, nbits

if TYPE_CHECKING:
    from .space import AddressSpace
    from .uffd import UffdCtx
    from .vma import Vma

_NOT_RW = np.uint8(nbits(RW))
_NOT_WP = np.uint8(nbits(WP))


def dup_mmap(parent: AddressSpace, child: AddressSpace) -> None:
    """Copy ``parent``'s VMAs and the entries the child inherits into the empty ``child``."""
    parent.c.mmap_lock_write += 1
    ctxs: dict[UffdCtx, UffdCtx] = {}
    for v in parent.vmas:
        cctx = _fork_ctx(v.uffd, child, ctxs)
        cv = v.clone(v.start, v.end, pgoff=v.pgoff, uffd=cctx,
                     wp_start=v.wp_start and cctx is not None)
        child.vma_list.vmas.append(cv)
        # vma_needs_copy(): a uffd-wp child VMA or one with an anon_vma; the rest is
        # faulted in lazily by the child
        if cctx is not None or v.anon_vma:
            _copy_range(parent, child, v, keep_wp=cctx is not None)
    child.vma_list.reindex()
    child.next_free = parent.next_free
    for parent_ctx, child_ctx in ctxs.items():
        parent_ctx.fork_complete(child_ctx)


def _fork_ctx(ctx: UffdCtx | None, child: AddressSpace,
              made: dict[UffdCtx, UffdCtx]) -> UffdCtx | None:
    """dup_userfaultfd(): the child's context for a VMA registered with ``ctx`` (None
    without UFFD_FEATURE_EVENT_FORK)."""
    if ctx is None or not ctx.has(U.UffdFeature.EVENT_FORK):
        return None
    got = made.get(ctx)
    if got is None:
        got = made[ctx] = ctx.fork_child(child)
    return got


def _copy_range(parent: AddressSpace, child: AddressSpace, v: Vma, keep_wp: bool) -> None:
    """copy_page_range(): anon PTEs read-only on both sides (COW)."""
    for k, i, j, t in parent.tables(v.start, v.end):
        ct = child.pt.alloc(k)
        if t.huge:
            ct.huge = True
        ct.st[i:j] = t.st[i:j]
        ct.ver[i:j] = t.ver[i:j]
        cow = (t.st[i:j] == PRESENT) & ((t.fl[i:j] & ANON) != 0)
        t.fl[i:j][cow] &= _NOT_RW
        cfl = t.fl[i:j].copy()
        if not keep_wp:
            cfl &= _NOT_WP  # the child VMA is not registered: the bit is dropped
            mk = ct.st[i:j] == MARKER
            ct.st[i:j][mk] = NONE
            cfl[mk] = 0
        ct.fl[i:j] = cfl


__all__ = ["dup_mmap"]
