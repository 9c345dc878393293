"""Renderers: heatmap and rate PNGs, terminal views, the trace recorder (fake tracker)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fakes import ANON, FILE, HEAP, PS, STACK, FakeClock, FakeTracker, M
from hypothesis import given
from hypothesis import strategies as st

from writewatch.monitor import Sampler, Series
from writewatch.monitor.render import bands, heatmap_matrix
from writewatch.monitor.series import _pct
from writewatch.monitor.view import LineView, LiveView, format_summary


def sweep_series(n: int = 40) -> Series:
    """A sweep over 64 pages of the anon mapping, 8 pages per interval, heap page k at
    interval k, the stack's top page every interval, and a shared file appearing at 10."""
    script = []
    for k in range(n):
        r = [(ANON[0] + (k % 8) * 8 * PS, ANON[0] + ((k % 8) * 8 + 8) * PS),
             (HEAP[0] + k * PS, HEAP[0] + (k + 1) * PS), (STACK[1] - PS, STACK[1])]
        if k >= 10:
            r.append((FILE[0], FILE[0] + 16 * PS))
        script.append(r)

    def maps(k: int) -> list[M]:
        out = [M(*HEAP, "rw-p", "[heap]"), M(*ANON, "rw-p", ""), M(*STACK, "rw-p", "[stack]")]
        return out + ([M(*FILE, "rw-s", "/var/lib/x/data.db")] if k >= 10 else [])

    clock = FakeClock()
    return Sampler(FakeTracker(script, maps), 0.1, target="fake", clock=clock,
                   wait=clock.wait).run(n * 0.1)


def test_heatmap_bands_compress_the_address_space_to_written_mappings() -> None:
    s = sweep_series()
    bl = bands(s)
    assert [b.label for b in bl] == ["[heap]", "data.db", "[anon]", "[stack]"]
    anon = bl[2]
    # the 256 MiB mapping is drawn over its written 64 pages only
    assert (anon.start, anon.end) == (ANON[0], ANON[0] + 64 * PS)
    assert int(anon.capacity.sum()) == 64 * PS


def test_heatmap_matrix_values_are_written_fractions() -> None:
    s = sweep_series()
    m, cons, edges, bl = heatmap_matrix(s)
    assert not cons.any()  # the fake reports nothing conservatively
    assert m.shape == (sum(b.rows for b in bl), 40)
    assert edges[0] == pytest.approx(0.0) and edges[-1] == pytest.approx(4.0)
    assert m.min() >= 0 and m.max() == pytest.approx(1.0)
    row0 = bl[0].rows + bl[1].rows
    anon = m[row0:row0 + bl[2].rows]
    # each column writes 8 of the 64 anon pages: 1/8 of the band's capacity
    cap = bl[2].capacity
    assert np.allclose((anon * cap[:, None]).sum(axis=0), 8 * PS)
    stack = m[row0 + bl[2].rows:]
    assert np.allclose(stack, 1.0)  # the stack page, every interval


def _png_ok(path, min_colours: int) -> np.ndarray:
    import matplotlib.image as mpimg
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) >= min_colours, "picture is (nearly) blank"
    return img


def test_heatmap_png_is_written_and_shows_the_writes(tmp_path) -> None:
    s = sweep_series()
    out = tmp_path / "heat.png"
    s.heatmap(str(out))
    img = _png_ok(out, 50)
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert out.stat().st_size > 20_000


def test_rate_plot_png(tmp_path) -> None:
    s = sweep_series()
    out = tmp_path / "rate.png"
    s.plot(str(out))
    _png_ok(out, 30)


def test_empty_series_still_renders(tmp_path) -> None:
    clock = FakeClock()
    s = Sampler(FakeTracker([[]]), 0.5, clock=clock, wait=clock.wait).run(1.0)
    s.heatmap(str(tmp_path / "h.png"))
    s.plot(str(tmp_path / "p.png"))
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_line_view_prints_measured_values() -> None:
    s = sweep_series(12)
    buf = io.StringIO()
    v = LineView(buf)
    for iv in s.intervals:
        v.update(iv, s)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 13  # header + one per interval
    last = s.intervals[-1]
    assert f"{last.rate:9.2f}" in lines[-1]
    assert "data.db 16" in lines[-1]
    assert sum("maps +1/-0" in line for line in lines) == 1


def test_live_view_renders_rate_and_top_mappings() -> None:
    from rich.console import Console
    s = sweep_series(12)
    v = LiveView(io.StringIO())
    con = Console(file=io.StringIO(), width=120, record=True)
    for iv in s.intervals:
        r = v.render(iv, s)
    con.print(r)
    text = con.export_text()
    assert f"{s.intervals[-1].rate:10.2f} MB/s" in text
    for name in ("[heap]", "[anon]", "[stack]", "data.db"):
        assert name in text


def test_summary_text() -> None:
    s = sweep_series()
    txt = format_summary(s)
    sm = s.summary()
    assert f"peak {sm.peak_rate:.2f}" in txt
    assert f"write working set {sm.working_set_pages} pages" in txt
    assert "mapping changes: 1 new, 0 removed" in txt


def test_record_writes_a_trace_the_model_reads(tmp_path) -> None:
    from writewatch.model.trace import Trace
    from writewatch.monitor.record import TraceRecorder

    clock = FakeClock()
    script = [[(HEAP[0], HEAP[0] + 2 * PS)], [(FILE[0], FILE[0] + PS)],
              [(0x400000, 0x401000)]]  # a write to memory that is read-only by then

    def maps(k: int) -> list[M]:
        out = [M(*HEAP, "rw-p", "[heap]"), M(0x400000, 0x401000, "r-xp", "/usr/bin/x")]
        return out + ([M(*FILE, "rw-s", "/tmp/d.db")] if k == 2 else [])

    path = tmp_path / "t.jsonl"
    sampler = Sampler(FakeTracker(script, maps), 0.1, clock=clock, wait=clock.wait)
    with TraceRecorder(path, PS, pid=1, argv=["x"]) as rec:
        sampler.run(0.3, lambda iv, s: rec.update(iv, s, sampler.regions),
                    on_start=lambda s: rec.maps(0.0, sampler.regions))
    tr = Trace.load(path)
    assert tr.header.page_size == PS and tr.header.pid == 1
    ops = [(o["op"], o.get("t")) for o in tr.ops]
    assert ops == [("maps", 0.0), ("written", pytest.approx(0.1)),
                   ("maps", pytest.approx(0.2)), ("written", pytest.approx(0.2)),
                   ("maps", pytest.approx(0.3)), ("written", pytest.approx(0.3))]
    assert tr.ops[0]["maps"] == [[HEAP[0], HEAP[1], "rw-p", "anon"]]  # writable only
    assert tr.ops[2]["maps"][1] == [FILE[0], FILE[1], "rw-s", "/tmp/d.db"]
    assert tr.ops[3]["ranges"] == [[FILE[0], FILE[0] + PS]]
    assert "outside" not in tr.ops[3]
    assert tr.ops[5]["ranges"] == [] and tr.ops[5]["outside"] == 1


@given(st.lists(st.floats(-1e9, 1e9), max_size=50), st.integers(0, 100))
def test_summary_percentiles_are_numpys(values: list[float], q: int) -> None:
    # the summary's p50/p95 computes numpy.percentile's default method without calling it
    want = float(np.percentile(values, q)) if values else 0.0
    assert _pct(values, q) == pytest.approx(want, rel=1e-12, abs=1e-6)
