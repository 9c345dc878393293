"""Shared fixtures (helpers live in memutil.py, importable from every test folder)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from memutil import Region, require_uffd_async

# The same examples on every run, so that a CI result can be reproduced; search new ones with
# `python -m pytest --hypothesis-profile explore` (and turn a failure into an @example).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")


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


@pytest.fixture(autouse=True)
def _no_leaked_children(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process of the test runner behind."""
    import os
    import time

    def children() -> set[int]:
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as f:
                return {int(p) for p in f.read().split()}
        except OSError:
            return set()

    before = children()
    yield
    for _ in range(50):  # a helper may need a moment to be reaped
        left = children() - before
        if not left:
            return
        time.sleep(0.1)
    names = {}
    for pid in left:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                names[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            names[pid] = "?"
    pytest.fail(f"{request.node.nodeid} left child processes behind: {names}")


@pytest.fixture(params=["uffd-async", "uffd-wp-sync", "soft-dirty"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tracker suite once per backend this kernel can run; ``backend="auto"`` (the
    default of every ``track()`` call in the test) means this one."""
    import writewatch
    from writewatch import tracker

    name: str = request.param
    feature = writewatch.features().backends[name]
    if not feature.usable:
        pytest.skip(f"{name} backend unusable here: {feature.detail}"
                    + (f" ({feature.fix})" if feature.fix else ""))
    monkeypatch.setattr(tracker, "_pick_backend", lambda b: name if b == "auto" else b)
    return name
