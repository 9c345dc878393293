"""Mappings change under the tracker: new, removed, moved; fork, exec, exit; a target with
its own userfaultfd."""

from __future__ import annotations

import time

import pytest
from procdriver import Driver

import writewatch
from writewatch.process import ProcessCollectInfo, attach

pytestmark = pytest.mark.usefixtures("uffd_async")


def _info(t) -> ProcessCollectInfo:  # type: ignore[no-untyped-def]
    info = t.last
    assert isinstance(info, ProcessCollectInfo)
    return info


def test_new_mapping_reported_by_what_was_written_then_exact(c_target: Driver) -> None:
    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        _, addr, n = d.cmd("m 40").split()  # maps 40 pages and writes each
        addr, n = int(addr, 16), int(n)
        got = t.collect()
        info = _info(t)
        new = writewatch.Pages([(addr, addr + n * d.ps)], d.ps)
        # written before it was armed: seen in the arming scan's categories, not conservative
        assert new <= got and len(info.conservative & new) == 0, info.reasons
        assert any(m.start <= addr < m.end for m in info.new)
        # from now on the new mapping is armed: only what is written is reported
        t.collect()
        logged = d.write([1, 2])
        got = t.collect()
        assert logged <= set(a for a in logged if a in got)
        assert len(got & new) == 0
        assert len(_info(t).conservative & new) == 0


def test_removed_and_moved_mappings_reported(c_target: Driver) -> None:
    d = c_target
    with attach(d.proc.pid) as t:
        _, addr, n = d.cmd("m 8").split()
        addr, n = int(addr, 16), int(n)
        t.collect()
        assert any(s.start <= addr < s.end for s in t.spans)
        _, moved = d.cmd("r").split()
        moved = int(moved, 16)
        got = t.collect()
        info = _info(t)
        assert any(m.start <= addr < m.end for m in info.removed)
        assert any(new.start == moved for _, new in info.moved), info.moved
        assert writewatch.Pages([(moved, moved + n * d.ps)], d.ps) <= got
        assert d.cmd("u") == "ok"
        t.collect()
        assert any(m.start <= moved < m.end for m in _info(t).removed)
        assert not any(s.start <= moved < s.end for s in t.spans)


def test_fork_child_untracked_parent_exact(c_target: Driver) -> None:
    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        idx = [3, 4, 100]
        assert d.cmd("f " + " ".join(map(str, idx))) == "fork 0"
        got = t.collect()
        assert {d.base + i * d.ps for i in idx} <= {a for a in (d.base + i * d.ps
                                                                 for i in idx) if a in got}
        logged = d.write([7])
        got = t.collect()
        assert all(a in got for a in logged)


def test_a_refusal_is_tried_again_once_the_maps_change(c_target: Driver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A new mapping whose registration fails (as when the target's brk or munmap races
    with UFFDIO_REGISTER) is reported whole while refused, and tried again at the first
    collect that sees the maps changed: tracked exactly from then on."""
    from writewatch import errors
    from writewatch.backends.uffd_async import UffdAsyncBackend

    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        real = UffdAsyncBackend.adopt

        def refuse(self, span, shared=False):  # type: ignore[no-untyped-def]
            raise errors.KernelError("UFFDIO_REGISTER failed (a race)", op="UFFDIO_REGISTER")

        monkeypatch.setattr(UffdAsyncBackend, "adopt", refuse)
        _, addr, n = d.cmd("m 40").split()
        addr, n = int(addr, 16), int(n)
        new = writewatch.Pages([(addr, addr + n * d.ps)], d.ps)
        got = t.collect()
        assert new <= got and new <= _info(t).conservative
        assert new <= t.collect()  # refused: reported whole again, the maps unchanged
        monkeypatch.setattr(UffdAsyncBackend, "adopt", real)
        d.cmd("m 2")  # the maps change
        got = t.collect()
        assert new <= got and new <= _info(t).conservative  # untracked until now
        assert not any(m.start <= addr < m.end for m, _ in t.refused)
        # not new (the 2 pages mapped next to it may have joined its VMA: that part is)
        assert (addr, addr + n * d.ps) not in [(m.start, m.end) for m in _info(t).new]
        t.collect()
        logged = d.write([1])
        got = t.collect()
        assert all(a in got for a in logged) and len(got & new) == 0


def test_a_mapping_unmapped_while_being_armed_is_not_refused(c_target: Driver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The target unmaps a new mapping between the collect's maps read and its
    UFFDIO_REGISTER (the target runs): the failed registration is looked at again against
    the maps as they are now, and nothing is refused."""
    from writewatch.backends.uffd_async import UffdAsyncBackend

    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        real = UffdAsyncBackend.adopt
        raced: list[int] = []

        def racing(self, span, shared=False):  # type: ignore[no-untyped-def]
            if not raced:
                raced.append(span.start)
                assert d.cmd("u") == "ok"  # munmap in the target, now
            return real(self, span, shared)

        monkeypatch.setattr(UffdAsyncBackend, "adopt", racing)
        addr = d.cmd("m 40").split()[1]
        t.collect()
        assert raced == [int(addr, 16)]
        assert not t.refused and not _info(t).conservative, _info(t).reasons
        logged = d.write([2])
        got = t.collect()
        assert all(a in got for a in logged) and not _info(t).conservative


def test_exec_detected_and_reattached(c_target: Driver) -> None:
    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        d.cmd("x")
        d.read_base()
        got = t.collect()
        info = _info(t)
        assert info.exec and t.exec_count == 1
        assert d.base in got and d.base in info.conservative
        t.collect()
        logged = d.write([5, 9, 200])
        got = t.collect()
        assert all(a in got for a in logged)
        buf = writewatch.Pages([(d.base, d.base + d.npages * d.ps)], d.ps)
        assert len(got & buf) == len(logged)


def test_exec_during_a_collect_is_an_exec_not_an_exit(c_target: Driver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The exec lands between the check of the mm and the scan: PAGEMAP_SCAN on the old mm
    fails with ESRCH. That is an exec (the process lives on), not an exit."""
    from writewatch.process.member import Member

    d = c_target
    with attach(d.proc.pid) as t:
        t.collect()
        d.cmd("x")
        d.read_base()
        real = Member.mm_state
        first = [True]

        def late(self):  # type: ignore[no-untyped-def]
            if first[0]:
                first[0] = False
                return "alive"  # as it was just before the exec
            return real(self)

        monkeypatch.setattr(Member, "mm_state", late)
        got = t.collect()
        info = _info(t)
        assert info.exec and not info.exited and t.exec_count == 1, info.reasons
        assert d.base in got and d.base in info.conservative
        t.collect()
        logged = d.write([3, 8])
        got = t.collect()
        assert all(a in got for a in logged)


def test_collects_racing_a_chain_of_execs_never_end_tracking_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A shell that execs itself 200 times, then sleeps 0.5 s, collected back to back:
    every exec that lands inside a collect is an exec, and tracking ends only once the
    process has exited (an exec taken for an exit ended it while the chain still ran)."""
    chain = tmp_path / "chain.sh"
    chain.write_text('n=$1; [ "$n" -lt 200 ] && exec /bin/sh "$0" $((n + 1)); sleep 0.5\n')
    t0 = time.monotonic()
    for k in range(4):
        if k and time.monotonic() - t0 > 20:  # under TCG one chain takes ~50 s: enough
            break
        t = writewatch.launch(["/bin/sh", str(chain), "0"])
        proc = t.process
        execs = 0
        try:
            with pytest.raises(writewatch.NoSuchProcess):
                while True:
                    t.collect()
                    execs += _info(t).exec
            assert proc.wait(0.3) == 0, execs  # it had exited: TimeoutExpired if not
        finally:
            t.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert execs >= 1


def test_exit_last_collect_then_no_such_process(c_target: Driver) -> None:
    d = c_target
    t = attach(d.proc.pid)
    try:
        t.collect()
        d.proc.stdin.write("q\n")
        d.proc.stdin.flush()
        d.proc.wait(5)
        got = t.collect()
        assert _info(t).exited and len(got) == 0
        with pytest.raises(writewatch.NoSuchProcess):
            t.collect()
    finally:
        t.close()
    t.close()  # idempotent


def test_target_with_its_own_userfaultfd(c_target: Driver) -> None:
    d = c_target
    _, addr, n = d.cmd("U 16").split()
    addr, n = int(addr, 16), int(n)
    with attach(d.proc.pid) as t:
        refused = t.refused
        assert len(refused) == 1
        info, why = refused[0]
        assert info.start == addr and info.end == addr + n * d.ps
        assert "userfaultfd" in why and "EBUSY" in why
        t.collect()
        got = t.collect()
        # reported whole at each collect (writes there cannot be seen), with the reason
        assert writewatch.Pages([(addr, addr + n * d.ps)], d.ps) <= _info(t).conservative
        assert any("refused" in r for r in _info(t).reasons)
        logged = d.write([0, 255])
        got = t.collect()
        assert all(a in got for a in logged)


def test_mappings_labels(c_target: Driver) -> None:
    with attach(c_target.proc.pid) as t:
        maps = t.mappings()
        labels = {m.label for m in maps}
        assert "stack" in labels and "anon" in labels
        assert any(m.start <= c_target.base < m.end for m in maps)
        assert all(m.perms[1] == "w" for m in maps)
        t.collect()
        c_target.write(range(10))
        t.collect()
        per = dict((m.start, k) for m, k in t.last.by_mapping())
        buf = next(m for m in maps if m.start <= c_target.base < m.end)
        assert per.get(buf.start, 0) >= 10  # the VMA may hold other data of the program
