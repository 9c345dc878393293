"""The exporter service: one sampling thread for every target, and the HTTP server of
``prometheus_client`` serving ``/metrics``."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import errors
from .metrics import Histograms, SnapshotCollector, families
from .targets import Target, TargetSpec

__all__ = ["Exporter", "parse_listen"]

#: sampling interval limits, seconds (above a day a wait overflows the platform's timeout)
MIN_INTERVAL, MAX_INTERVAL = 0.01, 86400.0

log = logging.getLogger("writewatch.exporter")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; PORT 0: any free port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        n = int(port)
    except ValueError:
        n = -1
    if not sep or not host or not 0 <= n < 65536:
        raise errors.InvalidTarget(f"--listen {text}: not HOST:PORT",
                                   hint="e.g. 127.0.0.1:9464")
    return host, n


class Exporter:
    """Samples every target each ``interval`` seconds and serves the metrics.

    Args:
        specs: the targets (:func:`writewatch.exporter.parse_target`).
        interval: seconds between sampling rounds.
        follow_forks: track each process's current descendants and the children it forks.
        window: seconds of the working-set window.
        retry: seconds before attaching again a target that could not be attached.
    """

    def __init__(self, specs: Sequence[TargetSpec], *, interval: float = 1.0,
                 follow_forks: bool = False, window: float = 60.0, retry: float = 10.0,
                 attach: Any = None) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise errors.InvalidTarget(f"interval {interval} s is out of range",
                                       hint=f"use {MIN_INTERVAL} s to {MAX_INTERVAL:g} s")
        if not specs:
            raise errors.InvalidTarget("no target given",
                                       hint="give --pid PID, --cgroup PATH or --match REGEX")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise errors.InvalidTarget("a target is given twice",
                                       hint=", ".join(sorted({n for n in names
                                                              if names.count(n) > 1})))
        self.interval = float(interval)
        nwin = max(1, round(window / interval))
        self.targets = [Target(s, follow_forks=follow_forks, window=nwin, retry=retry,
                               attach=attach) for s in specs]
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.collector = SnapshotCollector()
        self._hist = Histograms()
        self._stop = threading.Event()
        self._late = 0
        self._round = 0.0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        self._publish()

    # -- HTTP --------------------------------------------------------------------------------
    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (in a thread); returns the address bound."""
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        # the exporter's own CPU and memory: process_cpu_seconds_total,
        # process_resident_memory_bytes, process_open_fds... (from /proc/self)
        ProcessCollector(registry=registry)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise errors.InvalidTarget(f"cannot listen on {host}:{port}: {exc.strerror}",
                                       hint="choose another --listen address") from None
        self._server, self._thread = server, thread
        self.address = (host, int(server.server_address[1]))
        return self.address

    # -- sampling ----------------------------------------------------------------------------
    def step(self) -> None:
        """One round: every target attached as needed and collected once."""
        t0 = time.perf_counter()
        now = time.monotonic()
        for t in self.targets:
            others = {p for o in self.targets if o is not t for p in o.tracked}
            try:
                t.step(now, others)
            except errors.WriteWatchError as exc:  # a target's failure is its own
                t._error(exc, "sampling failed")
        self._round = time.perf_counter() - t0
        self._publish()

    def _publish(self) -> None:
        self.collector.set(families(self.targets, self._hist, page_size=self.page_size,
                                    interval=self.interval, round_s=self._round,
                                    late=self._late))

    def run(self, duration: float | None = None) -> None:
        """Sample every interval (drift-free: round *k* is due at *k* intervals from the
        start) until :meth:`stop`, SIGTERM/SIGINT (when called in the main thread) or
        ``duration`` seconds."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, lambda *_: self._stop.set())
        t0 = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                self.step()
                k += 1
                now = time.monotonic() - t0
                if duration is not None and now >= duration:
                    break
                due = k * self.interval
                if now - due > self.interval / 10:
                    skipped = int((now - due) / self.interval)
                    self._late += max(1, skipped)
                    k += skipped
                    due = k * self.interval
                if duration is not None:
                    due = min(due, duration)  # the last round is at the duration
                self._stop.wait(max(0.0, due - now))
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Detach every target and stop the HTTP server. Idempotent."""
        for t in self.targets:
            t.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        log.info("exporter stopped: every target detached")

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
