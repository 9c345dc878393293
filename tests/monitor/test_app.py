"""The monitor command's options and outputs, driven with a fake tracker."""

from __future__ import annotations

import argparse
import json

import pytest
from fakes import ANON, HEAP, PS, FakeTracker

import writewatch
from writewatch.cli._monitor import add_monitor_arguments, outputs
from writewatch.monitor import Outputs, read_csv


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_monitor_arguments(p)
    return p.parse_args(list(argv))


def test_interval_and_duration_units() -> None:
    a = parse("--interval", "10ms", "--duration", "2m")
    assert a.interval == pytest.approx(0.01) and a.duration == 120
    assert parse("-i", "0.5s").interval == 0.5
    assert parse().interval == 1.0 and parse().duration is None
    with pytest.raises(SystemExit):
        parse("--interval", "5ms")
    with pytest.raises(SystemExit):
        parse("--duration", "soon")
    for bad in ("nan", "inf", "-inf", "infms"):
        with pytest.raises(SystemExit):
            parse("--duration", bad)
        with pytest.raises(SystemExit):
            parse("--interval", bad)


@pytest.mark.parametrize(("kw", "match"), [
    ({"interval": float("inf")}, "interval inf"), ({"interval": float("nan")}, "interval nan"),
    ({"interval": "1"}, "interval '1'"), ({"duration": float("nan")}, "duration nan"),
    ({"duration": 0}, "duration 0"), ({"duration": True}, "duration True")])
def test_monitor_refuses_bad_times(kw, match) -> None:
    with pytest.raises(writewatch.InvalidTarget, match=match):
        writewatch.monitor(FakeTracker([[]]), **kw)


def test_unwritable_output_is_refused_before_starting(tmp_path) -> None:
    with pytest.raises(writewatch.WriteWatchError, match="not writable"):
        outputs(parse("--json", str(tmp_path / "no" / "such" / "x.json")))
    with pytest.raises(writewatch.WriteWatchError, match="stdout"):
        outputs(parse("--json", "-", "--csv", "-"))
    with pytest.raises(writewatch.WriteWatchError, match="not writable"):
        Outputs(perfetto=str(tmp_path / "no" / "t.pftrace")).check()
    with pytest.raises(writewatch.WriteWatchError, match="unit"):
        Outputs(unit="GB").check()
    for opt in ("json", "csv", "heatmap", "plot", "record", "perfetto"):
        with pytest.raises(writewatch.WriteWatchError, match="is a directory"):
            Outputs(**{opt: str(tmp_path)}).check()


def test_all_outputs_from_one_run(tmp_path, capsys) -> None:
    script = [[(HEAP[0], HEAP[0] + 4 * PS)], [(ANON[0], ANON[0] + 32 * PS)],
              [(HEAP[0], HEAP[0] + PS)]]
    files = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "heatmap", "plot", "record")}
    args = parse("--interval", "10ms", "--no-live",
                 *[x for k, f in files.items() for x in (f"--{k}", str(f))])
    tr = FakeTracker(script, exits=True)
    series = writewatch.monitor(tr, interval=args.interval, outputs=outputs(args),
                                target="fake target", pid=4242)
    out = capsys.readouterr().out
    assert series.ended == "target exited"
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["t(s)", "pages", "written"]
    assert len([ln for ln in lines[1:4]]) == 3
    assert "summary: fake target" in out and "ended: target exited" in out
    doc = json.loads(files["json"].read_text())
    assert [i["pages"] for i in doc["intervals"]] == [4, 32, 1]
    assert doc["target"] == "fake target"
    assert [r["pages"] for r in read_csv(files["csv"].read_text())] == [4, 32, 1]
    for k in ("heatmap", "plot"):
        assert files[k].read_bytes()[:4] == b"\x89PNG"
    rec = files["record"].read_text().splitlines()
    assert json.loads(rec[0])["pid"] == 4242
    assert sum('"op":"written"' in ln for ln in rec) == 3


def test_json_to_stdout_moves_the_human_output_to_stderr(capsys) -> None:
    args = parse("--interval", "10ms", "--json", "-")
    writewatch.monitor(FakeTracker([[(HEAP[0], HEAP[0] + PS)]], exits=True),
                       interval=args.interval, outputs=outputs(args), target="f")
    cap = capsys.readouterr()
    assert json.loads(cap.out)["intervals"][0]["pages"] == 1
    assert "summary:" in cap.err


def test_run_and_attach_reject_bad_input() -> None:
    from writewatch.cli import attach as attach_cmd
    from writewatch.cli import run as run_cmd
    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    with pytest.raises(writewatch.WriteWatchError, match="no command"):
        run_cmd.run(p.parse_args(["--"]))
    p = argparse.ArgumentParser()
    attach_cmd.add_arguments(p)
    with pytest.raises(writewatch.WriteWatchError):
        attach_cmd.run(p.parse_args(["0"]))
