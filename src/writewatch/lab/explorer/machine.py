"""The race explorer's transition system: a scenario's threads (writers, a reclaim thread,
and the tracker: a collector, or a synchronous design's fault handler) as atomic steps over
one state, under one design (module docstring of :mod:`writewatch.lab.races`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .pte import ARM_BASE, MARKER, NONE, PAGE, ZERO, Pte, PteRules, pte_desc
from .spec import Design, Scenario, Step

# Per-thread local state: (op index, pc, aux). State: (ptes, threads, queue, copies, ring).
Local = tuple[int, str, Any]
State = tuple[tuple[Pte, ...], tuple[Local, ...], tuple[int, ...], tuple[Any, ...],
              tuple[int, ...]]
Move = tuple[Step, State, str, int]  # step, next state, loss reason ("" = none), duplicates


class _WriterStep:
    """One writer thread about to take a step: its state and the move constructors."""

    def __init__(self, ex: Machine, st: State, i: int) -> None:
        self.st = st
        self.ptes, self.threads, self.queue, self.copies, self.ring = st
        self.i = i
        self.op_idx, self.pc, self.aux = self.threads[i]
        self.name = ex.names[i]
        self.p = ex.progs[i][self.op_idx][1]
        self.pte = self.ptes[self.p]
        self.sdm = ex.d.collect == "softdirty"
        self.desc = pte_desc(self.pte, self.sdm)

    def thr(self, idx: int, npc: str, naux: Any = None) -> tuple[Local, ...]:
        t = self.threads
        return (*t[:self.i], (idx, npc, naux), *t[self.i + 1:])

    def step(self, action: str, nptes: tuple[Pte, ...], nthreads: tuple[Local, ...],
             nqueue: tuple[int, ...] | None = None, nring: tuple[int, ...] | None = None,
             dup: int = 0) -> Move:
        q = self.queue if nqueue is None else nqueue
        r = self.ring if nring is None else nring
        return (Step(self.name, action), (nptes, nthreads, q, self.copies, r), "", dup)


class Machine:
    """Every thread's next atomic step from a state, and the verdict at the end."""

    def __init__(self, design: Design, scen: Scenario) -> None:
        self.d = design
        self.s = scen
        self.shmem = scen.memory == "shmem"
        self.names = (*tuple(n for n, _ in scen.threads), "handler" if design.sync else "tracker")
        self.progs = tuple(prog for _, prog in scen.threads)
        self.nw = len(self.progs)
        self.npages = len(scen.pages)
        self.arm = tuple(ARM_BASE + p if (self.shmem or k == "mapped") else 0
                         for p, k in enumerate(scen.pages))
        self.pte = PteRules(design, self.shmem)

    # ---------------------------------------------------------------- initial state
    def initial(self) -> State:
        d = self.d
        ptes: list[Pte] = []
        for p, k in enumerate(self.s.pages):
            c = self.arm[p]
            if k == "mapped":
                if d.collect == "softdirty":      # clear_refs 4 write-protects, clears sd
                    ptes.append((PAGE, False, False, False, c))
                else:                             # UFFDIO_WRITEPROTECT sets the bit
                    ptes.append((PAGE, True, True, True, c))
            elif self.pte.markers:                    # WP_UNPOPULATED / non-anon: marker
                ptes.append((MARKER, True, False, False, c))
            else:
                ptes.append((NONE, False, False, False, c))
        threads: list[Local] = [(0, "go", None) for _ in self.progs]
        if d.sync:
            threads.append((0, "idle", None))
            copies: tuple[Any, ...] = (None,) * self.npages       # live snapshot
        else:
            threads.append((0, "start", None))
            copies = self.arm                                     # incremental replica
        return (tuple(ptes), tuple(threads), (), copies, ())

    # ---------------------------------------------------------------- moves
    def moves(self, st: State) -> list[Move]:
        out: list[Move] = []
        for i in range(self.nw):
            m = self._writer(st, i)
            if m is not None:
                out.append(m)
        m = self._handler(st) if self.d.sync else self._tracker(st)
        if m is not None:
            out.append(m)
        return out

    def _set(self, tup: tuple[Any, ...], i: int, v: Any) -> tuple[Any, ...]:
        return (*tup[:i], v, *tup[i + 1:])

    def _writer(self, st: State, i: int) -> Move | None:
        threads = st[1]
        op_idx, pc, _ = threads[i]
        prog = self.progs[i]
        if op_idx >= len(prog) or pc == "wait":
            return None
        w = _WriterStep(self, st, i)
        op = prog[op_idx][0]
        if op in ("dontneed", "reclaim"):
            return self._zap_step(w, op)
        if op == "read":
            return self._read_step(w)
        return self._write_step(w)

    def _zap_step(self, w: _WriterStep, op: str) -> Move:
        p, pte = w.p, w.pte
        if op == "reclaim" and pte[0] != PAGE:
            return w.step(f"reclaim p{p}: nothing mapped", w.ptes, w.thr(w.op_idx + 1, "go"))
        zapped = self.pte.zap(pte, op == "dontneed")
        what = ("madvise(MADV_DONTNEED) p{p}: zap" if op == "dontneed" else
                "reclaim p{p}: zap PTE, page stays in cache").format(p=p)
        return w.step(f"{what} -> {pte_desc(zapped, w.sdm)}", self._set(w.ptes, p, zapped),
                      w.thr(w.op_idx + 1, "go"))

    def _read_step(self, w: _WriterStep) -> Move:
        p, pte, aux = w.p, w.pte, w.aux
        if w.pc == "go":
            if pte[0] in (PAGE, ZERO):
                return w.step(f"read p{p}", w.ptes, w.thr(w.op_idx + 1, "go"))
            return w.step(f"read fault on p{p} (pte: {w.desc})", w.ptes,
                          w.thr(w.op_idx, "ptl", pte))
        # pc == "ptl": map for read under the PTL
        if pte != aux:
            return w.step(f"PTL: p{p} changed ({w.desc}), back off", w.ptes,
                          w.thr(w.op_idx, "go"))
        wp = self.pte.protected(aux) and not w.sdm
        if self.shmem:
            new: Pte = (PAGE, wp, not w.sdm, False, aux[4])
        else:
            new = (ZERO, wp, False, False, 0)
        return w.step(f"PTL: map p{p} for read -> {pte_desc(new, w.sdm)}",
                      self._set(w.ptes, p, new), w.thr(w.op_idx, "go"))

    def _write_step(self, w: _WriterStep) -> Move:
        p, pte, aux, pc = w.p, w.pte, w.aux, w.pc
        if pc == "go":
            if pte[0] == PAGE and pte[2] and not pte[1]:
                data = (w.i + 1) * 100 + w.op_idx + 1
                return w.step(f"store to p{p} lands", self._set(
                    w.ptes, p, (PAGE, False, True, pte[3], data)), w.thr(w.op_idx + 1, "go"))
            return w.step(f"write fault on p{p} (pte: {w.desc})", w.ptes,
                          w.thr(w.op_idx, "fault", pte))
        if pc == "fault":
            if self.pte.userfault(aux):
                # userfaultfd_must_wait(): do not sleep if the protection is gone.
                if pte != aux:
                    return w.step(f"handle_userfault: p{p} changed ({w.desc}), retry",
                                  w.ptes, w.thr(w.op_idx, "go"))
                return w.step(f"handle_userfault: queue wp message for p{p}, sleep", w.ptes,
                              w.thr(w.op_idx, "wait", p), (*w.queue, p),
                              dup=self._dup(w.st, p))
            if aux[0] != PAGE:
                what = "look up p{p} in page cache" if self.shmem and aux[0] != ZERO \
                    else "allocate page for p{p}"
                return w.step(what.format(p=p), w.ptes, w.thr(w.op_idx, "ptl", aux))
            pc = "ptl"
        if pc == "ptl":
            return self._install(w)
        if pc == "notify":
            return w.step(f"queue wp message for p{p} (after mapping), sleep", w.ptes,
                          w.thr(w.op_idx, "wait", p), (*w.queue, p), dup=self._dup(w.st, p))
        raise AssertionError(pc)

    def _install(self, w: _WriterStep) -> Move:
        """A write fault's PTE update under the PTL, after the pte_same() re-check."""
        p, pte, aux = w.p, w.pte, w.aux
        if pte != aux:
            return w.step(f"PTL: p{p} changed ({w.desc}), back off", w.ptes,
                          w.thr(w.op_idx, "go"))
        # do_anonymous_page() / set_pte_range(): vmf_orig_pte_uffd_wp() carries a
        # marker's protection into the new PTE (a discard marker has none to carry).
        new = (PAGE, aux[0] == MARKER and aux[1], True, True, aux[4] if aux[0] != ZERO else 0)
        nring = w.ring
        if self.d.collect == "ring" and self.pte.protected(aux):
            nring = (*w.ring, p)
        post = "notify" if (self.d.notify_after_map and self.pte.none_like(aux)) else "go"
        what = f"map p{p}" if self.pte.none_like(aux) else \
            f"map p{p} keeping the marker's bit" if aux[0] == MARKER else (
                f"copy-on-write zero page at p{p}" if aux[0] == ZERO else
                f"make p{p} writable (soft-dirty)" if w.sdm else f"clear uffd-wp bit of p{p}")
        if nring is not w.ring:
            what += f", append p{p} to ring"
        if post == "notify":
            what += " WITHOUT uffd-wp bit"
        return w.step(f"PTL: {what} -> {pte_desc(new, w.sdm)}", self._set(w.ptes, p, new),
                      w.thr(w.op_idx, post, aux), nring=nring)

    def _c(self, c: int | None) -> str:
        return _content(c, self.names)

    def _dup(self, st: State, p: int) -> int:
        """1 if a message for p now repeats one the handler already resolved.

        A message queued while another for p is still queued or being handled is a
        concurrent fault on the same page, not a duplicate."""
        _, threads, queue, copies, _ = st
        hpc, hp = threads[-1][1], threads[-1][2]
        busy = p in queue or (hpc in ("copy", "unprotect") and hp == p)
        return int(copies[p] is not None and not busy)

    def _handler(self, st: State) -> Move | None:
        ptes, threads, queue, copies, ring = st
        _op_idx, pc, p = threads[-1]
        name = self.names[-1]
        sdm = False

        def thr(npc: str, naux: Any = None) -> tuple[Local, ...]:
            return (*threads[:-1], (0, npc, naux))

        if pc == "idle":
            if not queue:
                return None
            q = queue[0]
            nxt = "copy" if copies[q] is None else "unprotect"
            note = "" if nxt == "copy" else " (already in snapshot)"
            return (Step(name, f"read message: wp fault on p{q}{note}"),
                    (ptes, thr(nxt, q), queue[1:], copies, ring), "", 0)
        if pc == "copy":
            c = ptes[p][4]
            loss = "" if c == self.arm[p] else (
                f"late copy: p{p} copied into the snapshot after new content landed "
                f"({self._c(c)} instead of {self._c(self.arm[p])})")
            return (Step(name, f"copy p{p} into snapshot ({self._c(c)})"),
                    (ptes, thr("unprotect", p), queue, self._set(copies, p, c), ring), loss, 0)
        # pc == "unprotect": UFFDIO_WRITEPROTECT mode=0 on p, then wake waiters on p
        kind, _wp, wr, sd, c = ptes[p]
        if kind in (NONE, MARKER) and self.d.none_protected:
            # pte_none means "protected" here, so an unprotected page cannot be left
            # unpopulated: the resolver maps it.
            new: Pte = (PAGE, False, True, True, c)
        elif kind == MARKER:
            new = (NONE, False, False, False, c)
        else:
            new = (kind, False, wr, sd, c)
        nthreads = (*((t[0], "go", None) if t[1] == "wait" and t[2] == p else t
                      for t in threads[:-1]), (0, "idle", None))
        woken = [self.names[j] for j, t in enumerate(threads[:-1])
                 if t[1] == "wait" and t[2] == p]
        return (Step(name, f"UFFDIO_WRITEPROTECT(mode=0) p{p} -> {pte_desc(new, sdm)}"
                     + (f", wake {', '.join(woken)}" if woken else "")),
                (self._set(ptes, p, new), nthreads, queue, copies, ring), "", 0)

    def _tracker(self, st: State) -> Move | None:
        ptes, threads, queue, copies, ring = st
        op_idx, pc, aux = threads[-1]
        if op_idx >= self.s.collects:
            return None
        name = self.names[-1]
        d = self.d
        sdm = d.collect == "softdirty"

        def thr(nidx: int, npc: str, naux: Any = None) -> tuple[Local, ...]:
            return (*threads[:-1], (nidx, npc, naux))

        def mv(action: str, nthreads: tuple[Local, ...], nptes: tuple[Pte, ...] = ptes,
               ncopies: tuple[Any, ...] = copies, nring: tuple[int, ...] = ring,
               dup: int = 0) -> Move:
            return (Step(name, action), (nptes, nthreads, queue, ncopies, nring), "", dup)

        if pc == "start":
            if d.collect == "ring":
                pages = tuple(sorted(set(ring)))
                return mv(f"drain ring: {_plist(pages)}", thr(op_idx, "reprotect",
                                                              (0, pages)), nring=())
            pc, aux = "scan", (0, ())
        if pc == "scan":
            k, rep = aux
            pte = ptes[k]
            w = self.pte.written(pte)
            nrep = (*rep, k) if w else rep
            nxt = thr(op_idx, "scan", (k + 1, nrep)) if k + 1 < self.npages else (
                thr(op_idx, "clear", (0, nrep)) if sdm else thr(op_idx, "copy", (0, nrep)))
            if sdm:
                return mv(f"read pagemap p{k}: soft-dirty={int(w)}", nxt)
            new = self.pte.wp(pte) if w else pte
            return mv(f"PAGEMAP_SCAN get+WP p{k}: "
                      + (f"written, -> {pte_desc(new, False)}" if w else "not written"),
                      nxt, nptes=self._set(ptes, k, new))
        if pc == "clear":
            nptes = tuple((PAGE, False, False, False, t[4]) if t[0] == PAGE else t
                          for t in ptes)
            return mv("write 4 to clear_refs: all PTEs read-only, soft-dirty cleared",
                      thr(op_idx, "copy", aux), nptes=nptes)
        if pc == "reprotect":
            k, rep = aux
            if k < len(rep):
                p = rep[k]
                new = self.pte.wp(ptes[p])
                return mv(f"re-protect p{p} -> {pte_desc(new, False)}",
                          thr(op_idx, "reprotect", (k + 1, rep)),
                          nptes=self._set(ptes, p, new))
            pc, aux = "copy", (0, rep)
        if pc == "copy":
            k, rep = aux
            if k >= len(rep):
                return mv("collect done, nothing reported" if not rep else
                          f"collect done: reported {_plist(rep)}", thr(op_idx + 1, "start"))
            p = rep[k]
            c = ptes[p][4]
            dup = 1 if copies[p] == c else 0
            return mv(f"copy p{p} into replica ({self._c(c)})",
                      thr(op_idx, "copy", (k + 1, rep)), ncopies=self._set(copies, p, c),
                      dup=dup)
        raise AssertionError(pc)

    # ---------------------------------------------------------------- end of a schedule
    def final(self, st: State) -> tuple[tuple[str, ...], int, bool]:
        """Reasons lost, duplicates of the final collect, deadlock: with all threads idle."""
        ptes, threads, _queue, copies, ring = st
        deadlock = any(t[0] < len(prog) for t, prog in zip(threads, self.progs, strict=False))
        reasons: list[str] = []
        dup = 0
        if self.d.sync:
            for p, pte in enumerate(ptes):
                if copies[p] is None and pte[4] != self.arm[p]:
                    reasons.append(f"unnotified: p{p} changed ({self._c(pte[4])}) without "
                                   f"a notification; the snapshot would hold it, not "
                                   f"{self._c(self.arm[p])}")
            return tuple(reasons), 0, deadlock
        if self.d.collect == "ring":
            rep = set(ring)
        else:
            rep = {p for p, pte in enumerate(ptes) if self.pte.written(pte)}
        for p, pte in enumerate(ptes):
            c = pte[4]
            if p in rep:
                dup += copies[p] == c
            elif copies[p] != c:
                kind = "discard" if c == 0 else "write"
                reasons.append(f"lost {kind}: p{p} holds {self._c(c)}, the replica "
                               f"{self._c(copies[p])}; final collect reports "
                               f"{_plist(tuple(sorted(rep)))}")
        return tuple(reasons), dup, deadlock


def _content(c: int | None, names: Sequence[str] = ()) -> str:
    if c is None:
        return "nothing"
    if c == 0:
        return "zeros"
    if c >= ARM_BASE:
        return f"arm-time data of p{c - ARM_BASE}"
    who = names[c // 100 - 1] if c // 100 <= len(names) else f"thread {c // 100}"
    return f"{who}'s write {c % 100}"


def _plist(pages: Iterable[int]) -> str:
    ps = list(pages)
    return "[" + ", ".join(f"p{p}" for p in ps) + "]" if ps else "[]"


__all__ = ["Local", "Machine", "Move", "State"]
