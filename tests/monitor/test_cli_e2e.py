"""``writewatch run`` / ``writewatch attach`` end to end, on a Python target that logs the
pages it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
WRITER = HERE / "targets" / "writer.py"
PS = os.sysconf("SC_PAGE_SIZE")

# The subcommands may not be listed in the dispatcher yet: add them in the child process.
_MAIN = ("import sys, writewatch.cli as c;"
         "c.COMMANDS = tuple(dict.fromkeys((*c.COMMANDS, 'run', 'attach')));"
         "from writewatch.cli.__main__ import main; sys.exit(main(sys.argv[1:]))")


def writewatch_cmd(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _MAIN, *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def process_tracking(uffd_async) -> None:
    try:
        import writewatch.process  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"process tracking (writewatch.attach/launch) not available: {exc}")


def read_log(path: Path) -> tuple[int, int, set[int]]:
    addr, n, *idx = map(int, path.read_text().split())
    return addr, n, {addr + i * PS for i in idx}


def buffer_pages(iv: dict, lo: int, hi: int) -> set[int]:
    out = set()
    for s, e in iv["ranges"]:
        out.update(range(max(s, lo), min(e, hi), PS))
    return out


def test_run_reports_exactly_the_pages_the_target_writes(process_tracking, tmp_path) -> None:
    log = tmp_path / "log"
    p = writewatch_cmd("run", "--duration", "2", "--interval", "0.25", "--json", "-", "--",
                       sys.executable, str(WRITER), str(log), "512", "3", "0", "0")
    assert p.returncode == 124, p.stderr  # --duration ended it, as timeout(1) reports
    doc = json.loads(p.stdout)
    addr, n, want = read_log(log)
    lo, hi = addr, addr + n * PS
    ivs = doc["intervals"]
    assert doc["ended"] == "duration"
    assert 6 <= len(ivs) <= 9
    seen = [buffer_pages(iv, lo, hi) for iv in ivs]
    first = next(i for i, s in enumerate(seen) if s)
    # the buffer is mapped after the launch: the collect that finds it reports it whole
    # (conservative); from then on every interval holds exactly the pages written
    assert want <= seen[first]
    steady = seen[first + 1:]
    assert len(steady) >= 4
    for k, got in enumerate(steady):
        assert want <= got, f"interval {first + 1 + k} lost {len(want - got)} pages"
        assert got == want, f"interval {first + 1 + k}: {len(got - want)} extra pages"
    s = doc["summary"]
    assert s["working_set_pages"] >= n
    assert s["peak_rate"] > 0
    assert "summary:" in p.stderr


def test_run_returns_the_command_exit_status(process_tracking, tmp_path) -> None:
    log = tmp_path / "log"
    out = tmp_path / "o.csv"
    p = writewatch_cmd("run", "--interval", "0.1", "--csv", str(out), "--no-live", "--",
                       sys.executable, str(WRITER), str(log), "64", "1", "10", "3")
    assert p.returncode == 3, p.stderr
    assert "ended: command exited, exit status 3" in p.stdout
    rows = out.read_text().splitlines()
    assert rows[0].startswith("index,t_start,t_end,pages")
    assert len(rows) >= 2


def test_run_of_a_program_shorter_than_an_interval_says_what_was_not_seen(
        process_tracking, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = writewatch_cmd("run", "--interval", "2s", "--no-live", "--json",
                       str(tmp_path / "o.json"), "--", sys.executable, "-c",
                       "b = bytearray(8 << 20)")
    assert p.returncode == 0, p.stderr
    assert "0 intervals" in p.stdout and "unseen: the target exited within" in p.stdout
    doc = json.loads((tmp_path / "o.json").read_text())
    assert 0 < doc["unseen_s"] < 2.5


def test_run_missing_command_is_a_clear_error(process_tracking) -> None:
    p = writewatch_cmd("run", "--", "/nonexistent/program")
    assert p.returncode != 0
    assert "error" in p.stderr.lower()
    assert "Traceback" not in p.stderr


def test_attach_to_a_running_process(process_tracking, tmp_path) -> None:
    log = tmp_path / "log"
    target = subprocess.Popen([sys.executable, str(WRITER), str(log), "256", "2", "0", "0"])
    try:
        for _ in range(200):
            if log.exists():
                break
            time.sleep(0.02)
        addr, n, want = read_log(log)
        heat = tmp_path / "h.png"
        rec = tmp_path / "t.jsonl"
        p = writewatch_cmd("attach", str(target.pid), "--duration", "1.5", "--interval",
                           "0.25", "--json", "-", "--heatmap", str(heat), "--record", str(rec))
        assert p.returncode == 0, p.stderr
        assert target.poll() is None  # still running, not left stopped or killed
        doc = json.loads(p.stdout)
        ivs = doc["intervals"]
        assert len(ivs) >= 5
        for iv in ivs:
            got = buffer_pages(iv, addr, addr + n * PS)
            assert got == want, f"interval {iv['index']}: {len(want ^ got)} pages differ"
        assert heat.read_bytes()[:4] == b"\x89PNG"
        from writewatch.model.trace import Trace
        tr = Trace.load(rec)
        assert tr.header.pid == target.pid
        assert sum(op["op"] == "written" for op in tr.ops) == len(ivs)
        # the model replays the recording
        from writewatch.model import compare
        (m,) = compare(tr, ["uffd-async"])
        assert m.available and m.collects == len(ivs) and m.false_negatives == 0
        # the target is unharmed and keeps writing
        time.sleep(0.1)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_attach_to_a_missing_process_is_a_clear_error(process_tracking) -> None:
    p = writewatch_cmd("attach", "999999999")
    assert p.returncode == 1
    assert "999999999" in p.stderr and "Traceback" not in p.stderr


def _intervals_printed(text: str) -> int:
    """Complete interval lines after the --no-live header line ("t(s) pages ...")."""
    rows = text.split("\n")[:-1]
    head = next((i for i, r in enumerate(rows) if r.split()[:1] == ["t(s)"]), None)
    return 0 if head is None else len(rows) - head - 1


def test_ctrl_c_on_attach_prints_the_summary_and_leaves_the_target_running(
        process_tracking, tmp_path) -> None:
    import signal
    log = tmp_path / "log"
    target = subprocess.Popen([sys.executable, str(WRITER), str(log), "64", "1", "0", "0"])
    try:
        for _ in range(200):
            if log.exists():
                break
            time.sleep(0.02)
        out = tmp_path / "s.json"
        lines, errs = tmp_path / "stdout", tmp_path / "stderr"
        with lines.open("w") as o, errs.open("w") as e:
            mon = subprocess.Popen([sys.executable, "-c", _MAIN, "attach", str(target.pid),
                                    "--interval", "0.1", "--no-live", "--json", str(out)],
                                   stdout=o, stderr=e)
        try:
            # ^C once the monitor samples (a header line, then one line per interval), not
            # while it still starts up: interpreter and imports take seconds on a slow machine
            deadline = time.monotonic() + 120
            while _intervals_printed(lines.read_text()) < 3:
                assert mon.poll() is None, errs.read_text()
                assert time.monotonic() < deadline, "no 3 intervals in 120 s: " + \
                    errs.read_text()
                time.sleep(0.05)
            mon.send_signal(signal.SIGINT)
            mon.wait(timeout=60)
        finally:
            if mon.poll() is None:
                mon.kill()
                mon.wait()
        stdout, stderr = lines.read_text(), errs.read_text()
        assert mon.returncode == 0, stderr
        assert "ended: interrupted" in stdout
        doc = json.loads(out.read_text())
        assert doc["ended"] == "interrupted" and len(doc["intervals"]) >= 3
        assert target.poll() is None
        status = Path(f"/proc/{target.pid}/status").read_text()
        assert "TracerPid:\t0" in status  # not left traced
        assert "State:\tT" not in status  # nor stopped
    finally:
        target.kill()
        target.wait()
