"""The monitor on real third-party programs from Debian under load.

Needs the apt packages ``redis-server`` and ``redis-tools`` (redis-server driven by
redis-benchmark) and ``sqlite3``; each test skips, saying which, when one is missing."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_cli_e2e import _MAIN, process_tracking  # noqa: F401  (fixture)


def need(*programs: str, package: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt install {package})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_loopback() -> None:
    with socket.socket() as srv, socket.socket() as cli:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cli.settimeout(10)
        try:
            cli.connect(srv.getsockname())
        except OSError as exc:
            pytest.skip(f"no loopback network here (connect to 127.0.0.1: {exc}); the "
                        "interface lo may be down")


@pytest.mark.slow
def test_redis_server_under_redis_benchmark(process_tracking, tmp_path) -> None:  # noqa: F811
    need("redis-server", package="redis-server")
    need("redis-benchmark", "redis-cli", package="redis-tools")
    need_loopback()
    port = free_port()
    out, heat, plot = tmp_path / "redis.json", tmp_path / "heat.png", tmp_path / "rate.png"
    # to files, not pipes: a line per interval plus redis's log over a benchmark that lasts
    # ~70 s in a TCG guest would fill a pipe nobody reads meanwhile
    mon_out, mon_err = tmp_path / "stdout", tmp_path / "stderr"
    with mon_out.open("w") as o, mon_err.open("w") as e:
        mon = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "run", "--interval", "0.2",
             "--no-live", "--json", str(out), "--heatmap", str(heat), "--plot", str(plot),
             "--", "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=o, stderr=e)
    try:
        # interpreter start-up, launch and redis start-up: ~20 s in an emulated (TCG) guest
        deadline = time.monotonic() + 120
        while True:
            ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                  text=True, timeout=30)
            if ping.stdout.strip() == "PONG":
                break
            if mon.poll() is not None:
                pytest.fail(f"the monitor exited ({mon.returncode}) before redis-server "
                            f"answered: {mon_err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer within 120 s")
            time.sleep(0.05)
        # 100k SETs of 512-byte values over 50k keys: tens of MiB of heap written (~2 s on
        # a desktop, ~70 s in a TCG guest)
        bench = subprocess.run(["redis-benchmark", "-p", str(port), "-n", "100000", "-t", "set",
                                "-d", "512", "-r", "50000", "-q"], capture_output=True,
                               text=True, timeout=600)
        assert bench.returncode == 0, bench.stderr
        time.sleep(0.5)
        mon.send_signal(signal.SIGTERM)  # stop monitoring: summary, files, end redis
        # the heatmap and plot import matplotlib, which may first build its font cache:
        # ~60 s in a TCG guest
        mon.wait(timeout=600)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    stdout, stderr = mon_out.read_text(), mon_err.read_text()
    doc = json.loads(out.read_text())
    assert doc["ended"] == "stopped", stderr
    assert mon.returncode == 0, stderr  # redis-server's own status: it exits 0 on SIGTERM
    s = doc["summary"]
    proven_ws = (s["working_set_pages"] - s["working_set_conservative_pages"]) * doc["page_size"]
    # 50k keys x 512 B values live in the heap: at least 20 MiB proven written
    assert proven_ws > 20 * 2**20, s
    assert s["peak_rate"] > 10, s  # MB/s while the benchmark runs
    top = [t["mapping"] for t in s["top"]]
    assert "[anon]" in top[:2] or "[heap]" in top[:2], top  # jemalloc arenas / brk heap
    assert "[stack]" in top
    assert heat.stat().st_size > 30_000 and plot.stat().st_size > 10_000
    assert "redis-server" in stdout


def test_sqlite3_write_heavy_script(process_tracking, tmp_path) -> None:  # noqa: F811
    need("sqlite3", package="sqlite3")
    sql = tmp_path / "load.sql"
    # a 64 MiB page cache filled by inserts, so the writes land in sqlite3's own memory
    sql.write_text(
        "PRAGMA cache_size=-65536; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;\n"
        "CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB);\n"
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 150000)\n"
        "INSERT INTO t SELECT x, randomblob(200) FROM c;\n"
        "CREATE INDEX tb ON t(b);\n")
    out = tmp_path / "sqlite.json"
    with sql.open() as script:  # the command inherits the monitor's stdin
        p = subprocess.run(
            [sys.executable, "-c", _MAIN, "run", "--interval", "0.1", "--no-live", "--json",
             str(out), "--", "sqlite3", str(tmp_path / "db")],
            stdin=script, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["exit_status"] == 0 and doc["ended"] == "command exited"
    s = doc["summary"]
    proven_ws = (s["working_set_pages"] - s["working_set_conservative_pages"]) * doc["page_size"]
    # 150k rows of 200 random bytes, then an index on them: > 30 MiB of page cache written
    assert proven_ws > 30 * 2**20, s
    assert s["intervals"] >= 3
    assert "sqlite3" in doc["target"]
