"""This library's uffd-async backend (``writewatch.backends.uffd_async``), unchanged, on the
model kernel: the mechanism plus what the library does about its gaps (it checks the layout
and reports remapped spans conservatively, and scans for PMD holes on kernels without the
2026 fix)."""

from __future__ import annotations

import numpy as np

from ... import _uapi as U
from ...model.profiles import Profile
from ...model.uffd import LINUX
from .base import Design, Host, needs_wp_async


class Library(Design):
    name = "writewatch"
    title = "this library's uffd-async backend, unchanged, on the model kernel"
    origin = "src/writewatch/backends/uffd_async.py"
    rules = LINUX
    features = int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED)
    explore_why = "the explorer runs tracker procedures, not the library's code"

    def unavailable(self, profile: Profile) -> str | None:
        return needs_wp_async(profile)

    def setup(self, r: Host) -> None:
        super().setup(r)
        from ...backends.uffd_async import UffdAsyncBackend
        self.backend = UffdAsyncBackend(
            "self", self.k, hole_scan=not r.profile.scan_pmd_hole_written)

    def arm(self, start: int, end: int) -> None:
        from ...backends.base import Span
        self.backend.add(Span(start, end))

    def collect(self) -> np.ndarray:
        got = self.backend.collect()
        if got.unmapped is None:
            out: np.ndarray = got.written
            return out
        # to the model a page that went away changed: what the library says in
        # CollectInfo.unmapped is part of its report
        return np.concatenate([got.written, got.unmapped])

    def close(self) -> None:
        self.backend.close()
