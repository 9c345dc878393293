"""One page's entry in the race explorer, and what a design's kernel side does to it.

The explorer keeps a page-table entry as a tuple (:data:`Pte`); :class:`PteRules` holds the
design's rules for it: which entries are protected, what a write fault on one does, what a
collect reports, what get+WP and a zap leave. A new rule of
:class:`~writewatch.model.WpRules` is added here too, and ``tests/model/test_crosscheck.py``
holds the explorer and the replay to the same verdicts.
"""

from __future__ import annotations

from .spec import Design


class Kind:
    """What one page's entry holds, in the explorer (the PTE's kind)."""

    NONE = 0  #: pte_none
    MARKER = 1  #: a marker: PTE_MARKER_UFFD_WP with the bit, a design's discard marker without
    ZERO_PAGE = 2  #: the zero page mapped
    PAGE = 3  #: a page mapped


NONE, MARKER, ZERO, PAGE = Kind.NONE, Kind.MARKER, Kind.ZERO_PAGE, Kind.PAGE
_KIND = {NONE: "none", MARKER: "marker", ZERO: "zero page", PAGE: "page"}

# Content values: 0 is a zero-filled page; ARM_BASE + p the data page p held before arming;
# a store by writer w's op i writes w * 100 + i + 1, so every store's data is distinct.
ARM_BASE = 1000

# A PTE: (kind, uffd-wp bit (set on Linux's markers; clear on a design's discard marker,
# which says "changed"), writable, soft-dirty, content).
# The content of NONE / MARKER is what a fault would map: 0 for anon, the page-cache page
# for shmem (the cache outlives the PTE).
Pte = tuple[int, bool, bool, bool, int]


def pte_desc(pte: Pte, softdirty: bool) -> str:
    kind, wp, wr, sd, _ = pte
    if kind == PAGE:
        if softdirty:
            return "page " + ("rw" if wr else "ro") + (" soft-dirty" if sd else "")
        return "page wp" if wp else "page"
    if kind == ZERO:
        return "zero page wp" if wp else "zero page"
    return _KIND[kind]


class PteRules:
    """The kernel side of ``design`` on one entry of anon or ``shmem`` memory."""

    def __init__(self, design: Design, shmem: bool) -> None:
        self.d = design
        self.shmem = shmem
        # userfaultfd_wp_use_markers(): every non-anon uffd-wp VMA, anon only with
        # WP_UNPOPULATED (mm/userfaultfd.c)
        self.markers = design.uffd and (shmem or design.markers)

    def protected(self, pte: Pte) -> bool:
        kind, wp = pte[0], pte[1]
        if kind in (PAGE, ZERO, MARKER):
            return wp
        return self.d.none_protected

    def none_like(self, pte: Pte) -> bool:
        """pte_none, or a design's discard marker: a write fault maps a fresh page (and, with
        notify_after_map, notifies afterwards)."""
        return pte[0] == NONE or (pte[0] == MARKER and not pte[1])

    def userfault(self, pte: Pte) -> bool:
        """Does a write fault on this PTE call handle_userfault before mapping?"""
        if not self.d.sync or pte[0] == MARKER:
            # A marker is resolved like pte_none (pte_marker_handle_uffd_wp() ->
            # do_pte_missing()); the new PTE inherits the protection, and the retried
            # store faults on that.
            return False
        if self.none_like(pte) and self.d.notify_after_map:
            return False
        return self.protected(pte)

    def written(self, pte: Pte) -> bool:
        """Does the design's collect report this PTE (before the final replica check)?"""
        d = self.d
        kind, wp, _, sd, _ = pte
        if d.collect == "softdirty":
            return kind == PAGE and sd          # VM_SOFTDIRTY was cleared at arm
        if kind in (PAGE, ZERO, MARKER):
            return not wp  # a discard marker (no bit) says "changed"
        # PAGEMAP_SCAN WRITTEN fast path (and the generic path after the 2026 fix):
        # pte_none in a uffd-wp VMA reads written (fs/proc/task_mmu.c, the 2026 fix).
        return kind == NONE and d.uffd

    def wp(self, pte: Pte) -> Pte:
        kind, _, wr, sd, c = pte
        if kind in (PAGE, ZERO, MARKER):
            return (kind, True, wr, sd, c)
        if kind == NONE and self.markers:      # get+WP on a hole arms a marker
            return (MARKER, True, False, False, c)
        return pte

    def zap(self, pte: Pte, discard: bool) -> Pte:
        """MADV_DONTNEED (discard=True) or shmem reclaim of one PTE."""
        d = self.d
        kind, wp = pte[0], pte[1]
        content = pte[4] if self.shmem else 0     # anon DONTNEED drops the page
        if d.uffd:
            # zap_install_uffd_wp_if_needed(): anon drops everything; file/shmem keeps
            # the protection as a marker (also on swap-out via try_to_unmap).
            keep = self.shmem and (kind == MARKER or wp)
        elif d.discard_marker and discard and kind != NONE:
            # the proposal's discard marker: "changed" on anon (the page became zeros); on
            # shmem, whose content stays, it keeps the entry's protection
            return (MARKER, self.shmem and wp, False, False, content)
        else:
            keep = False
        return (MARKER, True, False, False, content) if keep else (NONE, False, False,
                                                                   False, content)

    # ---------------------------------------------------------------- moves


__all__ = ["ARM_BASE", "MARKER", "NONE", "PAGE", "ZERO", "Kind", "Pte", "PteRules", "pte_desc"]
