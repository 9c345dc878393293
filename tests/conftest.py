"""Shared fixtures (helpers live in memutil.py, importable from every test folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from memutil import Region, require_uffd_async

# The same examples on every run, so that a CI result can be reproduced; search new ones with
# `python -m pytest --hypothesis-profile explore` (and turn a failure into an @example).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

TESTS = Path(__file__).resolve().parent

#: Test files (paths under tests/) whose outcome depends on the running kernel: its
#: mechanisms, their versions and fixes, its architecture. They get the ``kernel`` marker;
#: ``-m kernel`` selects them, and .ci/run runs only those in the kernel-matrix guests (the
#: host runs everything). A kernel-dependent test elsewhere carries
#: ``@pytest.mark.kernel`` itself.
KERNEL_DEPENDENT = (
    # the mechanisms through the kernel-call layer
    "kernel/test_pagemap_scan.py", "kernel/test_uffd.py", "kernel/test_mthp.py",
    "backends/test_soft_dirty.py", "backends/test_uffd_sync.py",
    # the tracker, once per backend the kernel can run
    "tracker/test_track.py", "tracker/test_lifecycle.py", "tracker/test_concurrency.py",
    "tracker/test_tracker_errors.py", "tracker/test_privilege.py",
    # other processes: attach and launch by ptrace syscall injection, process snapshots
    "process/test_errors.py", "process/test_exact.py", "process/test_launch_soft_dirty.py",
    "process/test_mappings.py", "process/test_safety.py", "process/test_threads_signals.py",
    "process/test_tree.py", "process/test_tree_snapshot.py", "snapshot/test_process.py",
    # the model against the real kernel
    "model/test_differential.py",
)


def pytest_configure(config: pytest.Config) -> None:
    gone = [p for p in KERNEL_DEPENDENT if not (TESTS / p).is_file()]
    if gone:  # a renamed file would silently drop out of the guests' runs
        raise pytest.UsageError(f"tests/conftest.py KERNEL_DEPENDENT names missing files: "
                                f"{', '.join(gone)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel = pytest.mark.kernel
    for item in items:
        try:
            rel = Path(item.path).resolve().relative_to(TESTS).as_posix()
        except ValueError:
            continue
        if rel in KERNEL_DEPENDENT:
            item.add_marker(kernel)


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

    def tracer() -> str:
        with open("/proc/self/status") as f:
            return next(line.split()[1] for line in f if line.startswith("TracerPid:"))

    before = children()
    yield
    assert tracer() == "0", f"{request.node.nodeid} left the test runner traced"
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
    monkeypatch.setattr(tracker, "_pick_backend", lambda b, kernel: name if b == "auto" else b)
    return name
