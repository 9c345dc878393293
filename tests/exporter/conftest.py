"""Fixtures for the exporter: a target writing a known number of pages per second, an
exporter serving on 127.0.0.1 in a thread of the test, and a scrape of its /metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PS = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="session")
def pacer_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/exporter/targets/pacer.c")
    out = tmp_path_factory.mktemp("targets") / "pacer"
    subprocess.run([cc, "-O1", "-Wall", "-o", str(out), str(HERE / "targets" / "pacer.c")],
                   check=True)
    return str(out)


class Pacer:
    """tests/exporter/targets/pacer.c: ``rate`` distinct pages per second."""

    def __init__(self, exe: str, rate: int, npages: int = 16384,
                 preexec: Callable[[], None] | None = None) -> None:
        self.rate = rate
        self.proc = subprocess.Popen([exe, str(npages), str(rate)], stdout=subprocess.PIPE,
                                     text=True, preexec_fn=preexec)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def pacers(pacer_bin: str) -> Iterator[Callable[..., Pacer]]:
    made: list[Pacer] = []

    def make(rate: int, **kw: object) -> Pacer:
        p = Pacer(pacer_bin, rate, **kw)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


class Running:
    """An :class:`writewatch.exporter.Exporter` sampling in a thread, serving on 127.0.0.1."""

    def __init__(self, exporter: object) -> None:
        self.exporter = exporter
        host, port = exporter.listen("127.0.0.1", 0)  # type: ignore[attr-defined]
        self.url = f"http://{host}:{port}/metrics"
        self.thread = threading.Thread(target=exporter.run, daemon=True)  # type: ignore
        self.thread.start()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """{(sample name, sorted labels): value} of one scrape."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(self.url, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def wait_for(self, what: Callable[[dict], bool], timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            m = self.scrape()
            if what(m):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last scrape: {_short(m)}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.exporter.stop()  # type: ignore[attr-defined]
        self.thread.join(30)
        self.exporter.close()  # type: ignore[attr-defined]


def _short(m: dict) -> str:
    return "; ".join(f"{n}{dict(lab)}={v}" for (n, lab), v in m.items()
                     if n.startswith("writewatch_") and "bucket" not in n)[:3000]


def value(m: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in m.items()
               if n == name and all((k, x) in lab for k, x in labels.items()))


@pytest.fixture
def serve(uffd_async: None) -> Iterator[Callable[..., Running]]:
    pytest.importorskip("prometheus_client")
    from writewatch.exporter import Exporter
    running: list[Running] = []

    def start(specs: list, **kw: object) -> Running:
        r = Running(Exporter(specs, **kw))  # type: ignore[arg-type]
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()
