"""One design definition, two engines: every design both can run, on every race scenario in
order, loses a change in the replay exactly when it does in the explorer."""

from __future__ import annotations

import pytest

from writewatch.lab import crosscheck, designs
from writewatch.lab.races import SCENARIOS

BOTH = [n for n, d in designs.DESIGNS.items() if d.explore is not None]


@pytest.mark.parametrize("design", BOTH)
def test_replay_and_explorer_agree(design: str) -> None:
    for scenario in SCENARIOS:
        a = crosscheck.check(design, scenario)
        assert a.agree, (f"{design} / {scenario}: explorer lost {a.explorer_lost or 'nothing'}"
                         f", replay lost {a.replay_lost} (FN {a.replay.false_negatives}, "
                         f"{a.replay.fn_examples[:1]})")


def test_every_design_is_explorable_or_says_why() -> None:
    for name, d in designs.DESIGNS.items():
        assert d.explore is not None or d.explore_why, name
    assert len(BOTH) >= 10


def test_the_fault_time_discard_is_reported_by_both() -> None:
    """write -> MADV_DONTNEED -> collect under the fault-time proposal: the discard marker
    says "changed" ("We might have to handle discarding of memory, by using a uffd-wp marker.
    Then we could detect that ... directly"), in both engines."""
    a = crosscheck.check("fault-time-async", "anon-dontneed-last")
    assert not a.explorer_lost and not a.replay_lost
    assert a.replay.false_negatives == 0 and a.replay.reported == 1


def test_a_disagreement_would_be_seen() -> None:
    """The check can fail: the replay of a design whose discards leave no marker loses the
    zeroing the explorer's fault-time design reports."""
    class NoDiscardMarker(designs.FaultTimeAsync):
        name = "fault-time-async-nomarker"
        rules = designs.FaultTimeAsync.rules.__class__(markers=False, none_protected=True)

    from writewatch.lab import races
    m = crosscheck.run_trace(crosscheck.scenario_trace(SCENARIOS["anon-dontneed-last"]),
                             NoDiscardMarker, crosscheck.PROFILES["6.18"])
    assert m.replica_last == 1
    assert not races.sequential("fault-time-async", "anon-dontneed-last").lost
