"""Pages: interval arithmetic checked against Python sets of page numbers."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import writewatch
from writewatch import Pages

PS = 4096
page_sets = st.sets(st.integers(min_value=0, max_value=200), max_size=60)


def to_pages(s: set[int]) -> Pages:
    return Pages.from_addresses([p * PS for p in s], PS)


def to_set(p: Pages) -> set[int]:
    return {int(a) // PS for a in p.addresses()}


@settings(max_examples=200, deadline=None)
@given(page_sets, page_sets)
def test_set_operations_match_python_sets(a: set[int], b: set[int]) -> None:
    pa, pb = to_pages(a), to_pages(b)
    assert to_set(pa) == a and len(pa) == len(a)
    assert to_set(pa | pb) == a | b
    assert to_set(pa & pb) == a & b
    assert to_set(pa - pb) == a - b
    assert to_set(pa ^ pb) == a ^ b
    assert (pa <= pb) == (a <= b)
    # coalesced: no two ranges touch
    r = (pa | pb).ranges
    assert np.all(r[1:, 0] > r[:-1, 1])
    for p in range(0, 201, 7):
        assert (p * PS + 5 in pa) == (p in a)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=300), st.integers(0, 1000))
def test_mask_round_trip(bits: list[bool], base_page: int) -> None:
    mask = np.array(bits)
    base = base_page * PS
    p = Pages.from_mask(mask, base, PS)
    assert np.array_equal(p.mask(base, len(bits) * PS), mask)
    assert len(p) == int(mask.sum())


def test_offsets_and_mask_relative_to_unaligned_target() -> None:
    p = Pages([(0x10000, 0x12000), (0x20000, 0x21000)], PS)
    start, length = 0x10800, 0x11000  # spans 0x10800..0x21800
    assert p.offsets(start, length).tolist() == [[0, 0x1800], [0xF800, 0x10800]]
    m = p.mask(start, length)
    assert len(m) == 18 and m.sum() == 3 and m[0] and m[1] and m[16]


def test_immutable_and_validated() -> None:
    p = Pages([(0, PS)], PS)
    with pytest.raises(ValueError):
        p.ranges[0, 0] = 5
    with pytest.raises(ValueError):
        Pages([(1, PS)], PS)
    with pytest.raises(ValueError):
        p | Pages([(0, 8192)], 8192)
    assert "1 pages" in repr(p) and p.nbytes == PS and p.page_size == PS
    assert list(p) == [(0, PS)] and bool(p) and not Pages((), PS)
    assert Pages([(0, PS), (PS, 2 * PS)], PS).ranges.tolist() == [[0, 2 * PS]]
    assert hash(p) == hash(Pages([(0, PS)], PS)) and p == Pages([(0, PS)], PS)


def test_page_size_cannot_be_changed() -> None:
    # a tracker hands out one shared empty set: no caller may alter what others get
    p = Pages.empty(PS)
    with pytest.raises(AttributeError):
        p.page_size = 1  # type: ignore[misc]
    assert Pages.empty(PS).page_size == PS


@pytest.mark.parametrize("make", [
    lambda: Pages([[1, PS]], PS),                      # not aligned
    lambda: Pages([[-PS, PS]], PS),                    # negative
    lambda: Pages([[2**64, 2**64 + PS]], PS),          # beyond 64 bits
    lambda: Pages([0, PS, 2 * PS], PS),                # not pairs
    lambda: Pages(np.zeros((2, 3), np.uint64), PS),    # not pairs
    lambda: Pages([[0.5, 1.5]], PS),                   # not integers
    lambda: Pages([[True, False]], PS),
    lambda: Pages([(0, PS)], 0),                       # page sizes
    lambda: Pages([(0, PS)], 3000),
    lambda: Pages([(0, PS)], 4096.0),
    lambda: Pages.from_addresses([-5], PS),
    lambda: Pages([(0, PS)], PS) | Pages([(0, 8192)], 8192),
    lambda: Pages([(0, PS)], PS) - 5,
])
def test_bad_input_is_a_typed_error(make) -> None:
    with pytest.raises(writewatch.InvalidTarget) as exc:
        make()
    assert exc.value.hint


def test_odd_but_valid_input() -> None:
    assert len(Pages(iter([(0, PS), (PS, 2 * PS)]), PS)) == 2  # any iterable of pairs
    assert len(Pages.from_addresses({PS, 3 * PS, 3 * PS + 5}, PS)) == 2  # a set of them
    top = Pages([[2**63, 2**63 + PS]], PS)
    assert 2**63 in top and 2**64 not in top and -1 not in top and 1.0 not in top


def test_owns_its_ranges() -> None:
    a = np.array([[0, PS]], np.uint64)
    p = Pages(a, PS)
    a[0, 1] = 8 * PS  # the caller's array changes; the set does not
    assert len(p) == 1 and a.flags.writeable
    assert Pages([(0, mmap.PAGESIZE)]).page_size == mmap.PAGESIZE  # the running one
