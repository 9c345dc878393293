"""Chains that continue by content, and pages stored once whatever snapshot or chain they
belong to; stores of format 1 stay readable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from snaphelp import chunk_files, store

import writewatch
from writewatch.snapshot import Snapshots, Snapshotter
from writewatch.snapshot.format import decode_manifest, hasher

pytestmark = pytest.mark.usefixtures("uffd_async")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _random(npages: int, seed: int) -> np.ndarray:
    buf = writewatch.zeros(npages * PAGE)
    buf[:] = np.random.default_rng(seed).integers(1, 256, buf.size, dtype=np.uint8)
    return buf


def _stored(path) -> int:  # type: ignore[no-untyped-def]
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def test_a_new_snapshotter_continues_the_chain_by_content(tmp_path) -> None:
    buf = _random(256, 1)
    d = tmp_path / "s"
    with Snapshotter(buf, store(d)) as s:
        base = s.save()
        buf[5 * PAGE] ^= 1
        first = s.save()
    want = buf.copy()
    changed = [3, 77, 200]
    for p in changed:
        buf[p * PAGE + 9] ^= 0x5A
    with Snapshotter(buf, store(d)) as s:
        info = s.save()
        assert (info.kind, info.parent, info.delta_by) == ("delta", first.name, "content")
        assert info.pages == len(changed)  # compared page by page, only the differing stored
        m = s.snapshots.manifest(info.name)
        assert m.stats["delta_by"] == "content" and m.stats["content_compared"] == 256
        # the next save of this Snapshotter is by tracking again
        buf[9 * PAGE] ^= 1
        nxt = s.save()
        assert (nxt.delta_by, nxt.pages) == ("tracking", 1)
        assert np.array_equal(s.restore(info).data, _flip(want, changed))
        assert np.array_equal(s.restore(nxt).data, buf)
        assert np.array_equal(s.restore(base).data[5 * PAGE], want[5 * PAGE] ^ 1)
        # full=True starts a new chain
        again = s.save(full=True)
        assert again.kind == "full" and again.parent is None
        assert s.verify().ok


def _flip(arr: np.ndarray, pages: list[int]) -> np.ndarray:
    out = arr.copy()
    for p in pages:
        out[p * PAGE + 9] ^= 0x5A
    return out


def test_another_target_starts_a_new_chain(tmp_path) -> None:
    d = tmp_path / "s"
    a, b = _random(64, 1), _random(64, 2)
    with Snapshotter(a, store(d)) as s:
        s.save()
    with Snapshotter(b, store(d)) as s:
        info = s.save()
        assert info.kind == "full" and info.delta_by == ""
        assert np.array_equal(s.restore(info).data, b)


def test_two_bases_of_an_unchanged_target_cost_little_more_than_one(tmp_path) -> None:
    """Identical pages are stored once: a second full base of the same 16 MiB adds only its
    manifest (extents and one 16-byte digest per page: 0.4 %)."""
    buf = _random(4096, 3)
    d = tmp_path / "s"
    with Snapshotter(buf, store(d)) as s:
        first = s.save()
        one = _stored(d)
        second = s.save(full=True)
        two = _stored(d)
    assert first.stored_bytes >= buf.nbytes and second.stored_bytes == 0
    assert second.dedup_bytes == buf.nbytes
    assert two <= 1.05 * one, (one, two)
    reader = Snapshots(d)
    assert np.array_equal(reader.restore(second).data, buf)
    assert reader.verify().ok


def test_pages_deduplicate_across_chains_and_within_a_save(tmp_path) -> None:
    """The same content at other addresses, in another chain, and pages repeated inside one
    buffer: each distinct page is stored once, and each chain restores its own bytes."""
    d = tmp_path / "s"
    a = _random(512, 4)
    b = writewatch.zeros(a.nbytes)
    b[:] = a
    b[100 * PAGE:101 * PAGE] = 7  # one page differs
    rep = writewatch.zeros(64 * PAGE)
    rep.reshape(64, PAGE)[:] = a[:PAGE]  # 64 copies of a's first page
    with Snapshotter(a, store(d)) as s:
        s.save()
    with Snapshotter(b, store(d)) as s:
        ib = s.save()
        assert ib.kind == "full"  # another buffer: a new chain
        assert ib.stored_bytes <= 2 * PAGE + 64 and ib.dedup_bytes == 511 * PAGE
    with Snapshotter(rep, store(d)) as s:
        ir = s.save()
        assert ir.stored_bytes == 0 and ir.dedup_bytes == 64 * PAGE
    reader = Snapshots(d)
    assert np.array_equal(reader.restore(ib).data, b)
    assert np.array_equal(reader.restore(ir).data, rep)
    assert reader.verify().ok
    # a delta stores a page that returned to an earlier content as a reference
    with Snapshotter(a, store(d)) as s:
        a[0:PAGE] = 9
        s.save()
        a[0:PAGE] = b[0:PAGE]
        back = s.save()
        assert back.pages == 1 and back.stored_bytes == 0 and back.dedup_bytes == PAGE


def test_dedup_survives_prune_and_gc(tmp_path) -> None:
    """After pruning, the index is rebuilt from what is left: a page whose chunk was
    collected is stored again, never referenced dangling."""
    d = tmp_path / "s"
    buf = _random(64, 5)
    with Snapshotter(buf, store(d), chunk_size=PAGE) as s:  # a chunk per page
        s.save()
        old = buf[:PAGE].copy()
        buf[:PAGE] = 1
        s.save()
        s.prune(1)  # the base's chunk of page 0 is collected
        buf[:PAGE] = old
        info = s.save()
        assert info.stored_bytes > 0
        assert np.array_equal(s.restore(info).data, buf) and s.verify().ok


def test_verify_checks_page_digests(tmp_path) -> None:
    """A manifest whose page digests do not match its chunks (damage that keeps the
    manifest's own checksum valid) is reported by verify."""
    d = tmp_path / "s"
    buf = _random(16, 6)
    with Snapshotter(buf, store(d)) as s:
        info = s.save()
    reader = Snapshots(d)
    m = reader.manifest(info.name)
    from dataclasses import replace

    from writewatch.snapshot.format import encode_manifest
    bad = replace(m, digests=np.asarray(m.digests)[::-1].copy())
    digest = hasher(reader.store.hash_name)
    with open(d / "snapshots" / info.name, "wb") as f:
        f.write(encode_manifest(bad, digest))
    report = Snapshots(d).verify()
    assert not report.ok and "page digest" in str(report.problems[0])


def test_format_1_stores_are_read_and_not_written(tmp_path) -> None:
    """A store written by the previous format (manifests without page digests) restores;
    saving into it is refused with an error that names the format."""
    d = tmp_path / "s"
    buf = _random(32, 7)
    with Snapshotter(buf, store(d)) as s:
        info = s.save()
    digest = hasher("xxh3_128")
    from dataclasses import replace

    from writewatch.snapshot.format import encode_manifest
    path = d / "snapshots" / info.name
    m = decode_manifest(path.read_bytes(), digest, info.name)
    path.write_bytes(encode_manifest(replace(m, digests=None), digest))
    assert path.read_bytes()[:8] == b"WWSNAP01"
    (d / "STORE").write_text(json.dumps({"format": 1, "hash": "xxh3_128"}))
    reader = Snapshots(d)
    assert np.array_equal(reader.restore(info).data, buf) and reader.verify().ok
    assert chunk_files(str(d))
    with pytest.raises(writewatch.WriteWatchError, match="format 1"):
        Snapshotter(buf, d)
    (d / "STORE").write_text(json.dumps({"format": 9, "hash": "xxh3_128"}))
    with pytest.raises(writewatch.WriteWatchError, match="format 9"):
        Snapshots(d)


def test_index_follows_deletions_made_through_the_reader(tmp_path) -> None:
    """Snapshots deleted through ``snapshotter.snapshots`` (not its prune): the next save
    rebuilds its index instead of referring to collected chunks."""
    d = tmp_path / "s"
    buf = _random(8, 8)
    with Snapshotter(buf, store(d), chunk_size=PAGE) as s:
        s.save()
        old = buf[:PAGE].copy()
        buf[:PAGE] = 3
        s.save()
        s.snapshots.prune(1)
        buf[:PAGE] = old
        info = s.save()
        assert np.array_equal(s.restore(info).data, buf) and s.verify().ok
