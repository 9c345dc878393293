"""Shared fixtures (helpers live in memutil.py, importable from every test folder)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from memutil import Region, require_uffd_async


@pytest.fixture
def region() -> Iterator[type[Region]]:
    made: list[Region] = []

    def make(*a, **kw) -> Region:
        r = Region(*a, **kw)
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        r.unmap()


@pytest.fixture
def uffd_async() -> None:
    require_uffd_async()
