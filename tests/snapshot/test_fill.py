"""The restore engine against a plain reference: any mapping of destination rows to chunk
pages (chunks read whole at an offset, with trailing or replaced pages, pages used twice,
zero rows, compressed chunks) restores the same bytes, and a damaged chunk raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from writewatch.snapshot import CorruptSnapshot, DirStore
from writewatch.snapshot.fill import ChunkFiller
from writewatch.snapshot.format import (
    CODEC_RAW,
    CODEC_ZSTD,
    encode_chunk,
    hasher,
    stream_hasher,
)

PS = 4096


@st.composite
def layouts(draw):  # type: ignore[no-untyped-def]
    nchunks = draw(st.integers(1, 5))
    sizes = [draw(st.integers(1, 12)) for _ in range(nchunks)]
    nrows = draw(st.integers(1, 40))
    # a base-like chunk laid out at an offset, then rows reassigned at random
    chunk = np.full(nrows, -1, np.int64)
    page = np.zeros(nrows, np.int64)
    off = draw(st.integers(0, nrows - 1))
    base = draw(st.integers(0, nchunks - 1))
    for j in range(min(sizes[base], nrows - off)):
        chunk[off + j], page[off + j] = base, j
    for _ in range(draw(st.integers(0, nrows))):
        r = draw(st.integers(0, nrows - 1))
        c = draw(st.integers(-1, nchunks - 1))
        chunk[r] = c
        page[r] = draw(st.integers(0, sizes[c] - 1)) if c >= 0 else 0
    codecs = [draw(st.sampled_from([CODEC_RAW, CODEC_ZSTD])) for _ in range(nchunks)]
    return sizes, chunk, page, codecs, draw(st.integers(1, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(layout=layouts())
# a chunk read whole at row 0 whose last page is replaced: that row belongs to a chunk read
# whole too (a one-page chunk), restored first; the first must not write past its last
# used page (found by tests/snapshot/test_crash.py's random workload)
@example(layout=([1, 3], np.array([1, 1, 0]), np.array([0, 1, 0]), [CODEC_RAW] * 2, 1))
def test_fill_equals_a_plain_copy(tmp_path_factory, layout) -> None:
    sizes, chunk, page, codecs, workers = layout
    store = DirStore(tmp_path_factory.mktemp("fill"), fsync=False)
    h = hasher(store.hash_name)
    rng = np.random.default_rng(len(chunk))
    datas, keys = [], []
    for n, codec in zip(sizes, codecs, strict=True):
        # compressible when zstd is asked, so that the chunk is stored compressed
        raw = (rng.integers(0, 4, n * PS, dtype=np.uint8) if codec else
               rng.integers(0, 256, n * PS, dtype=np.uint8))
        key = h(raw)
        store.put(f"chunks/{key.hex()}", encode_chunk(raw, codec))
        datas.append(raw.reshape(n, PS))
        keys.append(key)
    store.flush()
    want = np.zeros((len(chunk), PS), np.uint8)
    for r, (c, p) in enumerate(zip(chunk.tolist(), page.tolist(), strict=True)):
        if c >= 0:
            want[r] = datas[c][p]
    rows = np.full((len(chunk), PS), 0xEE, np.uint8)
    filler = ChunkFiller(store, h, stream_hasher(store.hash_name), workers)
    filler.fill(rows, chunk, page, keys, ["s"] * len(keys))
    assert np.array_equal(rows, want)
    store.close()


def test_a_damaged_chunk_read_whole_raises(tmp_path) -> None:
    store = DirStore(tmp_path / "s", fsync=False)
    h = hasher(store.hash_name)
    raw = np.random.default_rng(1).integers(0, 256, 4 * PS, dtype=np.uint8)
    key = h(raw)
    store.put(f"chunks/{key.hex()}", encode_chunk(raw))
    store.flush()
    path = tmp_path / "s" / "chunks" / key.hex()[:2] / key.hex()
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    rows = np.zeros((4, PS), np.uint8)
    filler = ChunkFiller(store, h, stream_hasher(store.hash_name), 1)
    with pytest.raises(CorruptSnapshot, match="checksum"):
        filler.fill(rows, np.zeros(4, np.int64), np.arange(4), [key], ["s"])
    store.close()
