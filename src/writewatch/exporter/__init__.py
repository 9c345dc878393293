"""Prometheus exporter: the dirty rates of processes, process trees, cgroups and processes
matched by their command line, served on ``/metrics`` for Prometheus to scrape.

``writewatch exporter --listen 127.0.0.1:9464 --cgroup /sys/fs/cgroup/system.slice/x.service``
(see docs/exporter.md). One sampling thread collects every target once per interval (one
collect per process tree); scrapes are served from the last round's figures.

Needs ``prometheus_client`` (``pip install 'writewatch[exporter]'``), imported when the
server starts; importing this package needs numpy only.
"""

from __future__ import annotations

from .metrics import BUCKETS, METRICS, STATES
from .service import Exporter, parse_listen
from .targets import (
           ERRORS,
           KINDS,
           REASONS,
           Target,
           TargetSpec,
           mapping_kind,
           parse_target,
           reason_class,
)

__all__ = ["BUCKETS", "ERRORS", "KINDS", "METRICS", "REASONS", "STATES", "Exporter", "Target",
           "TargetSpec", "mapping_kind", "parse_listen", "parse_target", "reason_class"]
