"""Userfaultfd write-protect in async mode + PAGEMAP_SCAN get-and-protect (Peter Xu and
Muhammad Usama Anjum, 6.7): "uffd-wp async mode as a soft-dirty replacement"."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ... import _uapi as U
from ...model.profiles import Profile
from ...model.uffd import LINUX, WpRules
from .base import Design, Host, needs_wp_async

_WRITTEN = int(U.PageCategory.WRITTEN)
_PRESENT = int(U.PageCategory.PRESENT)


class UffdAsync(Design):
    name = "uffd-async"
    title = "uffd-wp async + PAGEMAP_SCAN, WRITTEN fast path"
    origin = "UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN (6.7, d61ea1cb0095)"
    rules = LINUX
    features = int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED)
    explore: ClassVar[str | None] = "scan"
    return_mask = _WRITTEN

    def unavailable(self, profile: Profile) -> str | None:
        return needs_wp_async(profile)

    def setup(self, r: Host) -> None:
        super().setup(r)
        self.fd = self.open_uffd()
        self.pm = self.k.open_pagemap("self")
        self.spans: list[tuple[int, int]] = []

    def scan(self, s: int, e: int) -> np.ndarray:
        res = self.k.scan_all(self.pm, s, e, flags=int(U.PmScanFlag.WP_MATCHING),
                              category_mask=_WRITTEN, return_mask=self.return_mask)
        out: np.ndarray = res.regions[:, :2]
        return out

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self.k.uffdio_register(self.fd, start, end - start, U.UffdRegisterMode.WP)
        self.scan(start, end)

    def collect(self) -> np.ndarray:
        parts = [self.scan(s, e) for s, e in self.spans]
        return np.concatenate(parts) if parts else np.empty((0, 2), np.uint64)


class UffdAsyncGeneric(UffdAsync):
    name = "uffd-async-generic"
    title = "uffd-wp async + PAGEMAP_SCAN, generic path (PRESENT also returned)"
    origin = "the fast/generic pte_none disagreement fixed in 2026"
    return_mask = _WRITTEN | _PRESENT
    explore: ClassVar[str | None] = None
    explore_why = "the explorer's kernel has the 2026 fixes: the two paths agree there"


class UffdAsyncNoUnpop(UffdAsync):
    name = "uffd-async-nounpop"
    title = "uffd-wp async without WP_UNPOPULATED: anon holes read written, cannot be armed"
    origin = ("hypothetical: Linux turns WP_UNPOPULATED on with WP_ASYNC (userfaultfd_api: "
              "\"WP_ASYNC relies on WP_UNPOPULATED\")")
    rules = WpRules(anon_markers=False)
    explore: ClassVar[str | None] = "scan"
