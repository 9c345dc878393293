"""The concurrency explorer: the fault-time proposal's data-loss race, none for the kernel's
designs, and exhaustive schedule counts that agree with combinatorics and brute force."""

from __future__ import annotations

import argparse
import functools
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from writewatch import WriteWatchError
from writewatch.lab.explorer.machine import Machine
from writewatch.model import races
from writewatch.model.races import (
    DESIGNS,
    SCENARIOS,
    RaceExplorerError,
    Scenario,
    Step,
    explore,
    format_schedule,
)


@functools.cache
def _explore(design: str, scenario: str) -> races.ExploreResult:
    """Built-in pairs are explored once per test session."""
    return explore(design, scenario)


def _brute_force(design: str, scenario: str | Scenario) -> tuple[int, int]:
    """Every schedule walked one by one, no memo: (schedules, losing)."""
    d = DESIGNS[design]
    s = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    ex = Machine(d, s)
    total = losing = 0
    stack = [(ex.initial(), False)]
    while stack:
        st, lost = stack.pop()
        mvs = ex.moves(st)
        if not mvs:
            total += 1
            losing += bool(lost or ex.final(st)[0])
            continue
        stack.extend((nxt, lost or bool(loss)) for _, nxt, loss, _ in mvs)
    return total, losing


# ---------------------------------------------------------------- Peter Xu's race


@pytest.mark.parametrize("scenario", ["shmem-zapped-2w", "shmem-reclaim", "shmem-mixed"])
def test_fault_time_sync_loses_a_write_on_shmem(scenario: str) -> None:
    r = explore("fault-time-sync", scenario, limit=5)
    assert r.losing_count > 0
    assert len(r.losing) == min(5, r.losing_count)
    sched = r.losing[0]
    print(f"\nfault-time-sync / {scenario}:\n" + format_schedule(sched, r.threads,
                                                                   r.reasons[0]))
    # The shape Peter Xu describes: one thread maps the page without the uffd-wp bit, a
    # store by ANOTHER thread lands, and only then does the handler copy the page.
    install = next(i for i, s in enumerate(sched) if "WITHOUT uffd-wp bit" in s.action)
    faulter = sched[install].thread
    page = sched[install].action.split()[2]                # "PTL: map pN WITHOUT ..."
    copy = next(i for i, s in enumerate(sched)
                if s.action.startswith(f"copy {page} into snapshot"))
    assert any(s.thread not in (faulter, "handler") and s.action == f"store to {page} lands"
               for s in sched[install + 1:copy])
    assert any("copied into the snapshot after new content landed" in why for why in r.reasons[0])


def test_the_race_needs_the_second_thread() -> None:
    one = Scenario("one-writer", "", "shmem", ("none",), (("W1", (("write", 0),)),),
                   collects=0)
    assert explore("fault-time-sync", one).losing_count == 0
    assert explore("fault-time-sync", "shmem-zapped-2w").losing_count > 0


def test_every_losing_schedule_of_the_race_is_found() -> None:
    r = explore("fault-time-sync", "shmem-zapped-2w", limit=10_000)
    assert len(r.losing) == r.losing_count == len(set(r.losing))
    assert _brute_force("fault-time-sync", "shmem-zapped-2w") == (r.schedules, r.losing_count)


# ---------------------------------------------------------------- the kernel's designs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("design", ["uffd-sync-unpop", "uffd-async"])
def test_markers_and_async_get_wp_lose_nothing(design: str, scenario: str) -> None:
    r = _explore(design, scenario)
    assert r.schedules > 0
    assert r.losing_count == 0, format_schedule(r.losing[0], r.threads, r.reasons[0])
    assert r.deadlocks == 0


@pytest.mark.parametrize("design", list(DESIGNS))
def test_no_design_deadlocks(design: str) -> None:
    for scenario in SCENARIOS:
        assert _explore(design, scenario).deadlocks == 0, scenario


def test_soft_dirty_loses_between_pagemap_read_and_clear_refs() -> None:
    r = explore("soft-dirty", "anon-collect", limit=50)
    assert r.losing_count > 0
    # the classic loss: the fault that sets a page's soft-dirty bit runs after the tracker
    # read that page clean and before clear_refs wipes the bit
    def classic(sched: tuple[Step, ...]) -> bool:
        for i, s in enumerate(sched):
            if s.action.startswith("read pagemap") and s.action.endswith("soft-dirty=0"):
                page = s.action.split()[2].rstrip(":")
                clear = next((j for j in range(i, len(sched))
                              if "clear_refs" in sched[j].action), len(sched))
                if any(t.action.startswith(f"PTL: make {page} writable")
                       for t in sched[i:clear]):
                    return True
        return False
    assert any(classic(s) for s in r.losing)


def test_soft_dirty_loses_shmem_writes_to_reclaim() -> None:
    # pagemap.rst: soft-dirty lives only in the PTE, lost when shmem is swapped out
    r = explore("soft-dirty", "shmem-reclaim", limit=200)
    assert any(any(s.action.startswith("reclaim p0: zap") for s in sched) and
               any("lost write" in why for why in whys)
               for sched, whys in zip(r.losing, r.reasons, strict=True))


def test_fault_time_async_loses_shmem_writes_to_reclaim_zap() -> None:
    # without markers a zapped written shmem PTE reads none = clean
    assert explore("fault-time-async", "shmem-reclaim").losing_count > 0
    assert explore("fault-time-async", "shmem-zapped-2w").losing_count == 0


@pytest.mark.parametrize("design", ["fault-time-sync", "vma-flag-sync"])
def test_notification_repeats_after_a_zap_without_markers(design: str) -> None:
    # Peter Xu: after DONTNEED "we'll get yet another wr-protect message"
    for scenario in ("anon-dontneed", "shmem-dontneed"):
        r = explore(design, scenario)
        assert r.duplicates == 1 and r.duplicate_schedules == r.schedules == 1
        marked = [s for s in r.example_dup if s.action.endswith("[duplicate]")]
        assert len(marked) == 1 and "queue wp message" in marked[0].action
    assert explore("uffd-sync-unpop", "shmem-dontneed").duplicates == 0


def test_without_wp_unpopulated_sync_misses_unpopulated_anon_only() -> None:
    # userfaultfd_wp_use_markers(): anon needs WP_UNPOPULATED, shmem always has markers
    r = _explore("uffd-sync", "anon-unpopulated-2w")
    assert r.losing_count == r.schedules and r.loss_kinds == ("unnotified",)
    assert _explore("uffd-sync", "shmem-zapped-2w").losing_count == 0
    # async without markers loses nothing (holes read written) but reports them every time
    r = _explore("uffd-async-nounpop", "anon-read-write")
    assert r.losing_count == 0
    assert r.duplicate_schedules > _explore("uffd-async", "anon-read-write"
                                            ).duplicate_schedules


def test_vma_flag_sync_loses_nothing() -> None:
    for scenario in SCENARIOS:
        assert _explore("vma-flag-sync", scenario).losing_count == 0, scenario


# ---------------------------------------------------------------- exhaustive counts


@pytest.mark.parametrize(("n1", "n2"), [(1, 1), (2, 1), (3, 2)])
def test_independent_writers_give_binomial_schedules(n1: int, n2: int) -> None:
    # Each writer writes its own armed page n times: fault entry, clear uffd-wp under the
    # PTL, store, then n-1 more stores that land at once: n + 2 steps each.
    scen = Scenario("indep", "", "anon", ("mapped", "mapped"),
                    (("W1", (("write", 0),) * n1), ("W2", (("write", 1),) * n2)),
                    collects=0)
    a, b = n1 + 2, n2 + 2
    r = explore("uffd-async", scen)
    assert r.schedules == math.comb(a + b, a)
    assert r.losing_count == 0


def test_three_threads_give_multinomial_schedules() -> None:
    scen = Scenario("indep3", "", "shmem", ("mapped", "mapped", "mapped"),
                    (("W1", (("write", 0),)), ("W2", (("write", 1), ("write", 1))),
                     ("kswapd", (("reclaim", 2),))), collects=0)
    a, b, c = 3, 4, 1
    r = explore("soft-dirty", scen)
    assert r.schedules == math.factorial(a + b + c) // (
        math.factorial(a) * math.factorial(b) * math.factorial(c))


@pytest.mark.parametrize(("design", "scenario"), [
    ("soft-dirty", "anon-read-write"), ("uffd-async", "anon-unpopulated-2w"),
    ("uffd-sync-unpop", "shmem-zapped-2w"), ("write-ring", "anon-dontneed-last"),
    ("fault-time-async", "anon-dontneed-last")])
def test_memoised_counts_equal_brute_force(design: str, scenario: str) -> None:
    r = _explore(design, scenario)
    assert _brute_force(design, scenario) == (r.schedules, r.losing_count)


# ---------------------------------------------------------------- API and CLI


def test_bad_names_raise_typed_errors_with_hints() -> None:
    with pytest.raises(RaceExplorerError) as e:
        explore("no-such-design", "shmem-zapped-2w")
    assert isinstance(e.value, WriteWatchError) and isinstance(e.value, ValueError)
    assert "uffd-async" in (e.value.hint or "")
    with pytest.raises(RaceExplorerError):
        explore("uffd-async", "no-such-scenario")
    with pytest.raises(RaceExplorerError):
        Scenario("bad", "", "anon", ("mapped",), (("W1", (("write", 3),)),))
    with pytest.raises(RaceExplorerError):
        Scenario("bad", "", "anon", ("mapped",), (("K", (("reclaim", 0),)),))


def test_result_is_frozen_and_serialisable() -> None:
    r = explore("fault-time-sync", "shmem-zapped-2w", limit=2)
    with pytest.raises(AttributeError):
        r.schedules = 0  # type: ignore[misc]
    d = r.to_dict()
    assert d["losing_schedules"] == r.losing_count and len(d["losing"]) == 2
    json.dumps(d)


def test_format_schedule_puts_each_step_in_its_thread_column() -> None:
    sched = (Step("A", "one"), Step("B", "two"), Step("A", "three"))
    lines = format_schedule(sched, ("A", "B"), ("lost",), width=10).splitlines()
    assert lines[0].split() == ["#", "A", "B"]
    assert lines[1].index("one") == lines[0].index("A")
    assert lines[2].index("two") == lines[0].index("B")
    assert lines[-1].strip() == "=> lost"


def _args(*argv: str) -> argparse.Namespace:
    from writewatch.cli import model as cli
    p = argparse.ArgumentParser()
    cli.races_arguments(p)
    return p.parse_args(list(argv))


def _run(args: argparse.Namespace) -> int:
    from writewatch.cli import model as cli
    return cli.races(args)


def test_cli_prints_the_table_and_the_losing_schedule(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert _run(_args("--design", "fault-time-sync", "--design", "uffd-sync-unpop",
                           "--scenario", "shmem-zapped-2w")) == 0
    out = capsys.readouterr().out
    assert "fault-time-sync" in out and "uffd-sync-unpop" in out
    assert "WITHOUT uffd-wp bit" in out
    assert "copied into the snapshot after new content landed" in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_args("--json", "--scenario", "anon-collect")) == 0
    rows = {(r["design"], r["scenario"]): r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {(d, "anon-collect") for d in DESIGNS}
    assert rows[("soft-dirty", "anon-collect")]["losing_schedules"] > 0
    assert rows[("uffd-async", "anon-collect")]["losing_schedules"] == 0


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_args("--list")) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in (*DESIGNS, *SCENARIOS))


# ---------------------------------------------------------------- random small scenarios

def _scenarios(sync_safe: bool):  # type: ignore[no-untyped-def]
    """Random scenarios of 1-2 pages, 2 threads of 1-2 ops, 0-1 concurrent collects.

    ``sync_safe`` leaves out MADV_DONTNEED on anon: without UFFD_FEATURE_EVENT_REMOVE
    (not modelled) a synchronous snapshot cannot see a discard, by design."""
    @st.composite
    def build(draw):  # type: ignore[no-untyped-def]
        memory = draw(st.sampled_from(["anon", "shmem"]))
        pages = tuple(draw(st.lists(st.sampled_from(["none", "mapped"]), min_size=1,
                                    max_size=2)))
        kinds = ["write", "write", "read"]
        if memory == "shmem":
            kinds += ["dontneed", "reclaim"]
        elif not sync_safe:
            kinds += ["dontneed"]
        op = st.tuples(st.sampled_from(kinds), st.integers(0, len(pages) - 1))
        threads = tuple((f"W{i + 1}", tuple(draw(st.lists(op, min_size=1, max_size=2))))
                        for i in range(2))
        return Scenario("random", "", memory, pages, threads,
                        collects=draw(st.integers(0, 1)))
    return build()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scen=_scenarios(sync_safe=True))
def test_random_scenarios_markers_and_async_lose_nothing(scen: Scenario) -> None:
    for design in ("uffd-sync-unpop", "uffd-async", "vma-flag-sync"):
        r = explore(design, scen, limit=1)
        assert r.deadlocks == 0
        assert r.losing_count == 0, (design, scen, format_schedule(
            r.losing[0], r.threads, r.reasons[0]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scen=_scenarios(sync_safe=False))
def test_random_scenarios_async_and_counts(scen: Scenario) -> None:
    for design in ("uffd-async", "uffd-async-nounpop"):
        assert explore(design, scen, limit=1).losing_count == 0, (design, scen)
    for design in ("fault-time-sync", "soft-dirty"):
        r = explore(design, scen, limit=0)
        if r.schedules <= 20_000:
            assert _brute_force(design, scen) == (r.schedules, r.losing_count)


def test_shortest_losing_schedule_is_shortest_and_loses() -> None:
    r = explore("fault-time-sync", "shmem-reclaim", limit=10_000)
    assert r.shortest and r.shortest_reasons
    assert len(r.losing) == r.losing_count          # all of them, to compare lengths
    assert r.shortest in r.losing
    assert len(r.shortest) == min(len(s) for s in r.losing)
    assert explore("uffd-sync-unpop", "shmem-reclaim").shortest == ()


@pytest.mark.parametrize(("design", "scenario", "match"), [
    ("uffd-async-generic", "anon-collect", "cannot be explored - the explorer"),
    ("nonsense", "anon-collect", "unknown design"), (int, "anon-collect", "not a design"),
    (None, "anon-collect", "not a design"), ("uffd-async", None, "not a scenario")])
def test_explore_says_what_is_wrong_with_its_arguments(design, scenario, match) -> None:  # type: ignore[no-untyped-def]
    from writewatch.model.races import RaceExplorerError, explore
    with pytest.raises(RaceExplorerError, match=match) as e:
        explore(design, scenario)
    assert e.value.hint and str(e.value).count(e.value.hint) == 1
