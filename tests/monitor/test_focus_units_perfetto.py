"""--mapping, rate units, mapping names, and --perfetto traces read back with Perfetto's own
protobuf definitions."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import ANON, HEAP, PS, STACK, FakeClock, FakeTracker, M

import writewatch
from writewatch.monitor import MIB, Region, Sampler, format_rate, format_summary
from writewatch.monitor import parse_focus as focus

HERE = Path(__file__).resolve().parent
PACER = HERE.parent / "exporter" / "targets" / "pacer.c"


def run(tracker, specs, duration=0.3, now=True):
    clock = FakeClock()
    return Sampler(tracker, 0.1, clock=clock, wait=clock.wait, focus=focus(specs),
                   focus_now=now).run(duration)


def test_mapping_labels_tell_anonymous_mappings_apart() -> None:
    a = Region(0x7F0000000000, 0x7F0040000000, "", "rw-p")
    assert a.name == "[anon]" and a.kind == "anon"
    assert a.ident == "[anon] 0x7f0000000000 1.0 GiB"
    m = Region(0x7F0000000000, 0x7F0010000000, "/memfd:pc.ram (deleted)", "rw-s")
    assert m.kind == "shmem" and m.ident == "memfd:pc.ram"
    assert Region(0, 4096, "", "rw-s").kind == "shmem"
    assert Region(0, 4096, "/usr/lib/libc.so.6", "rw-p").ident == "libc.so.6"
    assert Region(0, 4096, "[heap]", "rw-p").kind == "heap"


def test_focus_keeps_only_the_pages_of_the_chosen_mappings() -> None:
    script = [[(HEAP[0], HEAP[0] + 3 * PS), (ANON[0], ANON[0] + 5 * PS),
               (STACK[0], STACK[0] + PS)]] * 3
    s = run(FakeTracker(script), "[heap]")
    assert [iv.pages for iv in s.intervals] == [3, 3, 3] and s.mapping == "[heap]"
    s = run(FakeTracker(script), [f"{ANON[0]:#x}-{ANON[0] + 2 * PS:#x}", "[stack]"])
    assert [iv.pages for iv in s.intervals] == [3, 3, 3]
    s = run(FakeTracker(script), f"{ANON[0]:#x}+{4 * PS}")
    assert [iv.pages for iv in s.intervals] == [4, 4, 4]
    # largest: the biggest writable, non-executable mapping (ANON: 256 MiB)
    maps = [M(*HEAP, "rw-p", "[heap]"), M(0x1000_0000, 0x9000_0000, "rwxp", ""),
            M(*ANON, "rw-p", ""), M(*STACK, "rw-p", "[stack]")]
    s = run(FakeTracker(script, lambda k: maps), "largest")
    assert [iv.pages for iv in s.intervals] == [5, 5, 5]
    assert s.mapping.startswith("largest (0x7f0000000000-")
    assert "mapping: largest" in format_summary(s)


def test_a_focus_that_matches_nothing_is_refused_when_attached() -> None:
    with pytest.raises(writewatch.WriteWatchError, match="no mapping matches"):
        run(FakeTracker([[]]), "libnothing.so")
    s = run(FakeTracker([[(HEAP[0], HEAP[0] + PS)]]), "libnothing.so", now=False)
    assert [iv.pages for iv in s.intervals] == [0, 0, 0]  # a launch: it may come later
    for bad in ("", "0x3000-0x1000"):
        with pytest.raises(writewatch.WriteWatchError):
            focus(bad)


def test_a_focus_range_is_whole_pages_and_within_64_bits() -> None:
    script = [[(ANON[0], ANON[0] + 5 * PS)]] * 3
    s = run(FakeTracker(script), f"{ANON[0] + 1:#x}-{ANON[0] + 2 * PS + 3:#x}")
    assert [iv.pages for iv in s.intervals] == [3, 3, 3]  # bytes of pages 0, 1 and 2
    s = run(FakeTracker(script), "0x0-0x10000000000000000")  # the whole 64-bit space
    assert [iv.pages for iv in s.intervals] == [5, 5, 5]
    for bad in ("0x0-0x10000000000001000", "0x1000+99999999999999999999G"):
        with pytest.raises(writewatch.InvalidTarget, match="beyond 2"):
            focus(bad)
    for bad in (123, [1, 2], [b"[heap]"]):
        with pytest.raises(writewatch.InvalidTarget, match="not a spec"):
            focus(bad)


@pytest.mark.parametrize("kw", [{"interval": 1e10}, {"interval": 0.001},
                                {"outputs": "s.json"}, {"mapping": 123}])
def test_monitor_refuses_bad_arguments(kw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(writewatch.InvalidTarget):
        writewatch.monitor(FakeTracker([[]]), **kw)


def test_units_are_exact() -> None:
    assert format_rate(1.048576, "MiB") == "1.00 MiB/s"
    assert format_rate(1.0, "MB") == "1.00 MB/s"
    assert format_rate(0.005) == "5.00 KB/s"
    assert format_rate(0.005 * MIB / 1e6, "MiB") == "5.12 KiB/s"
    s = run(FakeTracker([[(ANON[0], ANON[0] + 256 * PS)]] * 3), None)
    txt = format_summary(s, "MiB")
    peak = s.summary().peak_rate * 1e6 / MIB
    assert f"dirty rate MiB/s ({MIB} bytes/s): peak {peak:.2f}" in txt
    assert "sampling: 3 samples; 0 late" in txt
    buf = io.StringIO()
    s.write_csv(buf)
    header, first = buf.getvalue().splitlines()[:2]
    assert header.split(",")[-1] == "rate_mib_s"
    assert float(first.split(",")[-1]) == pytest.approx(s.intervals[0].nbytes / MIB / 0.1,
                                                         rel=1e-4)


def test_perfetto_trace_of_a_process_tree_reads_back(uffd_async, tmp_path) -> None:
    pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the pacer target")
    exe = tmp_path / "pacer"
    subprocess.run([cc, "-O1", "-o", str(exe), str(PACER)], check=True)
    trace = tmp_path / "t.pftrace"
    # a forked child (sh runs the first pacer), then the root itself execs the second
    # (3 s each: at least 4 samples per pacer even on a loaded machine)
    script = f"{exe} 4096 1000 3 >/dev/null & sleep 0.4; exec {exe} 4096 250 3 >/dev/null"
    p = subprocess.run([sys.executable, "-m", "writewatch", "run", "--interval", "0.2",
                        "--quiet", "--perfetto", str(trace), "--", "/bin/sh", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"wrote {trace}" in p.stdout
    t = pb.Trace.FromString(trace.read_bytes())
    tracks = {pk.track_descriptor.uuid: pk.track_descriptor for pk in t.packet
              if pk.HasField("track_descriptor")}
    names = {d.name for d in tracks.values()}
    assert {"dirty rate", "write working set", "tree dirty rate", "events"} <= names
    procs = {d.process.pid: d.uuid for d in tracks.values() if d.HasField("process")}
    assert len(procs) >= 2  # sh (then the second pacer) and the first pacer
    counters = {}
    for pk in t.packet:
        ev = pk.track_event
        if pk.HasField("track_event") and ev.type == pb.TrackEvent.TYPE_COUNTER:
            counters.setdefault(ev.track_uuid, []).append(ev.double_counter_value)
    rate_of = [sorted(counters[d.uuid]) for d in tracks.values()
               if d.name == "dirty rate" and d.uuid in counters]
    # the pacers' steady intervals: 1000 and 250 pages/s (the root's "dirty rate" track is
    # the exec'd pacer's from 0.4 s on)
    medians = sorted(v[len(v) // 2] / PS for v in rate_of if len(v) >= 4)
    assert any(900 <= m <= 1150 for m in medians), (medians, p.stdout)
    assert any(200 <= m <= 300 for m in medians), (medians, p.stdout)
    events = [pk.track_event.name for pk in t.packet if pk.HasField("track_event")
              and pk.track_event.type == pb.TrackEvent.TYPE_INSTANT]
    assert sum(e.startswith("fork ") for e in events) >= 2
    assert sum(e.startswith("exec ") for e in events) >= 1
    assert sum(e.startswith("exit ") for e in events) >= 1
    assert any(e.startswith("map ") for e in events)
    ts = [pk.timestamp for pk in t.packet if pk.HasField("track_event")]
    assert ts == sorted(ts) or max(ts) - min(ts) < 10 * 10**9
    assert os.path.getsize(trace) > 100
