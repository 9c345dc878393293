"""The snapshot, restore, diff and snapshots subcommands (called through their modules)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from writewatch.cli import diff, restore, snapshot, snapshots
from writewatch.snapshot import Snapshots

WRITER = r"""
import sys, time, numpy as np
a = np.zeros(1 << 22, np.uint8)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
i = 0
while time.time() < end:
    a[(i * 7919 * 4096) % a.size] = i & 255
    i += 1
"""


def call(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return mod.run(p.parse_args(argv))


def test_durations():
    assert snapshot.parse_duration("5s") == 5
    assert snapshot.parse_duration("250ms") == 0.25
    assert snapshot.parse_duration("2m") == 120
    assert snapshot.parse_duration("1.5") == 1.5
    for bad in ("", "0s", "fast", "-1s"):
        with pytest.raises(argparse.ArgumentTypeError):
            snapshot.parse_duration(bad)


def test_snapshot_pid_then_restore_diff_list(tmp_path, capsys):
    p = subprocess.Popen([sys.executable, "-c", WRITER, "30"], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        store = str(tmp_path / "st")
        assert call(snapshot, [str(p.pid), "--store", store, "--every", "100ms",
                               "--count", "3"]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 3 and "full" in out and "delta" in out
        assert p.poll() is None  # left running
    finally:
        p.kill()
        p.wait()
    img = str(tmp_path / "img")
    assert call(restore, [store, "3", "--out", img]) == 0
    assert "-> " in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(img).st_mode) == 0o600
    with open(img + ".maps.json") as f:
        side = json.load(f)
    data = np.fromfile(img, np.uint8)
    want = Snapshots(store).restore(3).data
    assert np.array_equal(data, want)
    assert sum(r["end"] - r["start"] for r in side["regions"]) == data.nbytes
    assert call(diff, [store, "1", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["a"] == "000001" and d["changed_pages"] > 0
    assert call(snapshots, [store, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "000003" in out and "ok" in out
    assert call(snapshots, [store, "--prune", "1"]) == 0
    assert [i.name for i in Snapshots(store).list()] == ["000003"]


def test_snapshot_command(tmp_path, capsys):
    from memutil import require_uffd_async
    require_uffd_async()
    store = str(tmp_path / "st")
    rc = call(snapshot, ["--store", store, "--every", "200ms", "--", sys.executable, "-c",
                         WRITER, "1.5"])
    assert rc == 0
    names = Snapshots(store).names()
    assert len(names) >= 3
    assert Snapshots(store).verify().ok


def test_restore_errors(tmp_path):
    from writewatch import WriteWatchError
    with pytest.raises(WriteWatchError, match="not a snapshot store"):
        call(restore, [str(tmp_path), "1", "--out", str(tmp_path / "x")])


def test_restore_help_mentions_criu():
    p = argparse.ArgumentParser()
    restore.add_arguments(p)
    assert "CRIU" in p.format_help() and "CRIU" in restore.HELP


def test_subcommands_plug_into_the_dispatcher(monkeypatch, capsys):
    from writewatch.cli import __main__ as entry
    monkeypatch.setattr(entry, "COMMANDS", ("snapshot", "restore", "diff", "snapshots"))
    parser = entry.build_parser()
    for name in ("snapshot", "restore", "diff", "snapshots"):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        assert "usage" in capsys.readouterr().out
    assert entry.main(["snapshots", "/nonexistent/store"]) == 1
    assert "not a snapshot store" in capsys.readouterr().err


def test_a_second_run_continues_the_chain(tmp_path, capsys):
    """Two `writewatch snapshot PID --count 1` runs on one store: the second snapshot is a
    delta by content against the first (--full makes a new base), with pre-copy."""
    from memutil import require_uffd_async
    require_uffd_async()
    p = subprocess.Popen([sys.executable, "-c", WRITER, "30"], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        store = str(tmp_path / "st")
        for extra in ([], ["--max-pause", "50ms"], ["--full"]):
            assert call(snapshot, [str(p.pid), "--store", store, "--count", "1", *extra]) == 0
        out = capsys.readouterr().out.splitlines()
        assert "full" in out[0] and "delta by content" in out[1] and "pre-copy" in out[1]
        assert "full" in out[2] and "delta" not in out[2]
        infos = Snapshots(store).list()
        assert [i.delta_by for i in infos] == ["", "content", ""]
        assert infos[1].parent == infos[0].name and infos[1].pages < infos[0].pages
        # the new base stores little: most of its pages are in the store already
        assert infos[2].dedup_bytes > infos[2].stored_bytes
    finally:
        p.kill()
        p.wait()
