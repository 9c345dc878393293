"""On-store formats: content-addressed chunks and snapshot manifests (pure: bytes in, values out).

Chunk blob ``chunks/<key>``::

    b"WWCK" | u8 version=1 | u8 codec (0 raw, 1 zstd) | u16 0 | u64 raw length | payload

``key`` is the hex digest of the raw (uncompressed) bytes under the store's hash
(``xxh3_128`` by default, ``blake2b-128`` without the xxhash package). Reading a chunk
recomputes the digest of what it decodes to and compares it with the key: the key is the
checksum, so a chunk can never yield bytes other than those it was written with.

Manifest blob ``snapshots/<name>`` (format 2)::

    b"WWSNAP02" | u32 json length | u32 extent count | u32 page digest count | json |
    extents | page digests | 16-byte digest

The final digest (same hash) covers everything before it. ``extents`` is a packed array of
:data:`EXTENT` records: ``npages`` pages starting at ``addr`` whose bytes are pages
``page .. page+npages`` of chunk ``chunk`` (an index into the manifest's chunk list), or zero
pages when ``chunk`` is :data:`ZERO`. ``page digests`` holds the 16-byte digest (the store's
hash) of every data page the extents name, in extent order: it is what deduplication looks
pages up by, and what a delta computed by content compares with, without reading any chunk.

Format 1 manifests (``WWSNAP01``, no page digests) are still read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CorruptSnapshot, SnapshotError

__all__ = ["EXTENT", "PAGE_DIGEST", "ZERO", "Manifest", "Region", "data_pages", "decode_chunk",
           "decode_manifest", "encode_chunk", "encode_manifest", "hasher", "page_digests",
           "stream_hasher"]

CHUNK_MAGIC = b"WWCK"
CHUNK_HEADER = struct.Struct("<4sBBHQ")
CODEC_RAW, CODEC_ZSTD = 0, 1
MANIFEST_MAGIC_V1 = b"WWSNAP01"
MANIFEST_HEADER_V1 = struct.Struct("<8sII")
MANIFEST_MAGIC = b"WWSNAP02"
MANIFEST_HEADER = struct.Struct("<8sIII")
DIGEST = 16
#: page digests in a manifest: (n, 2) little-endian u64 halves of the 16-byte digests
PAGE_DIGEST = np.dtype("<u8")

#: One run of pages in a manifest.
EXTENT = np.dtype([("addr", "<u8"), ("npages", "<u4"), ("chunk", "<u4"), ("page", "<u4")])
#: ``chunk`` value of an extent of zero pages (no data stored).
ZERO = 0xFFFFFFFF

HASHES = ("xxh3_128", "blake2b-128")


def hasher(name: str) -> Callable[[Any], bytes]:
    """The 16-byte digest function named ``name``."""
    if name == "xxh3_128":
        try:
            import xxhash
        except ImportError:
            raise SnapshotError("this store hashes with xxh3_128, which needs xxhash",
                                hint="pip install 'writewatch[snapshot]'") from None
        return xxhash.xxh3_128_digest
    if name == "blake2b-128":
        return lambda data: hashlib.blake2b(data, digest_size=16).digest()
    raise SnapshotError(f"unknown hash {name!r}", hint=f"one of {', '.join(HASHES)}")


def stream_hasher(name: str) -> Callable[[], Any]:
    """A factory of incremental hash objects (``update``, ``digest``) for hash ``name``: the
    digest of the concatenated updates equals :func:`hasher`'s of the whole."""
    if name == "xxh3_128":
        hasher(name)
        import xxhash
        return xxhash.xxh3_128
    if name == "blake2b-128":
        return lambda: hashlib.blake2b(digest_size=16)
    raise SnapshotError(f"unknown hash {name!r}", hint=f"one of {', '.join(HASHES)}")


def page_digests(rows: np.ndarray, digest: Callable[[Any], bytes]) -> np.ndarray:
    """The digest of each row of ``rows`` (n, page_size) as an (n, 2) u64 array. One hash
    call per page: xxh3_128 hashes a 4 KiB page in about 0.5 us here (call included)."""
    n = len(rows)
    if not n:
        return np.empty((0, 2), PAGE_DIGEST)
    flat = memoryview(np.ascontiguousarray(rows).reshape(-1).data).cast("B")
    ps = rows.shape[1]
    joined = bytearray(b"".join([digest(flat[i:i + ps]) for i in range(0, n * ps, ps)]))
    return np.frombuffer(joined, PAGE_DIGEST).reshape(n, 2)


def data_pages(extents: np.ndarray) -> int:
    """How many pages of ``extents`` hold data (are not zero extents)."""
    return int(extents["npages"][extents["chunk"] != ZERO].sum(dtype=np.int64))


def default_hash() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b-128"
    return "xxh3_128"


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise SnapshotError("zstd compression needs the zstandard package",
                            hint="pip install 'writewatch[snapshot]' or compress=None") from None
    return zstandard


def encode_chunk(raw: Any, codec: int = CODEC_RAW, level: int = 1) -> list[Any]:
    """The chunk blob for ``raw`` as a list of buffers (header, payload): no copy when raw."""
    n = memoryview(raw).nbytes
    if codec == CODEC_ZSTD:
        payload: Any = _zstd().ZstdCompressor(level=level).compress(raw)
        if len(payload) >= n:  # incompressible: store raw
            codec, payload = CODEC_RAW, raw
    else:
        payload = raw
    return [CHUNK_HEADER.pack(CHUNK_MAGIC, 1, codec, 0, n), payload]


def decode_chunk(blob: Any, key: bytes, digest: Callable[[Any], bytes], *,
                 snapshot: str | None = None) -> memoryview:
    """The raw bytes of a chunk blob, checked against its key."""
    name = key.hex()
    mv = memoryview(blob)
    if mv.nbytes < CHUNK_HEADER.size:
        raise CorruptSnapshot(f"truncated ({mv.nbytes} bytes, header needs "
                              f"{CHUNK_HEADER.size})", snapshot=snapshot, chunk=name)
    magic, version, codec, _, n = CHUNK_HEADER.unpack_from(mv)
    if magic != CHUNK_MAGIC or version != 1:
        raise CorruptSnapshot("bad header (not a writewatch chunk)", snapshot=snapshot,
                              chunk=name)
    payload = mv[CHUNK_HEADER.size:]
    if codec == CODEC_RAW:
        raw = payload
    elif codec == CODEC_ZSTD:
        try:
            dobj = _zstd().ZstdDecompressor().decompressobj()
            raw = memoryview(dobj.decompress(payload))
            if not dobj.eof or dobj.unused_data:
                raise CorruptSnapshot("zstd frame is incomplete or followed by extra bytes",
                                      snapshot=snapshot, chunk=name)
        except SnapshotError:
            raise
        except Exception as exc:
            raise CorruptSnapshot(f"zstd frame does not decode ({exc})", snapshot=snapshot,
                                  chunk=name) from None
    else:
        raise CorruptSnapshot(f"unknown codec {codec}", snapshot=snapshot, chunk=name)
    if raw.nbytes != n:
        raise CorruptSnapshot(f"holds {raw.nbytes} bytes, header says {n} (truncated?)",
                              snapshot=snapshot, chunk=name)
    if digest(raw) != key:
        raise CorruptSnapshot("checksum mismatch: content differs from what was stored",
                              snapshot=snapshot, chunk=name)
    return raw


@dataclass(frozen=True)
class Region:
    """One mapping of the snapshotted address space (a tracked buffer's pages, or one
    writable mapping of a process as in /proc/PID/maps)."""

    start: int
    end: int
    perms: str = "rw-p"
    offset: int = 0
    path: str = ""
    #: for a buffer: the exact bytes of the object inside the page-aligned region
    data_start: int | None = None
    data_length: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"start": self.start, "end": self.end, "perms": self.perms,
                             "offset": self.offset, "path": self.path}
        if self.data_start is not None:
            d["data_start"], d["data_length"] = self.data_start, self.data_length
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Region:
        return cls(int(d["start"]), int(d["end"]), str(d.get("perms", "rw-p")),
                   int(d.get("offset", 0)), str(d.get("path", "")),
                   None if d.get("data_start") is None else int(d["data_start"]),
                   None if d.get("data_length") is None else int(d["data_length"]))


@dataclass(frozen=True)
class Manifest:
    """One snapshot: the regions at that moment and where each page's bytes are.

    A ``full`` manifest covers every page of its regions. A ``delta`` covers the pages
    written since ``parent``; every other page of a region is the parent's page at the same
    address (a region absent from the parent is covered in full)."""

    name: str
    parent: str | None
    created: float
    page_size: int
    regions: tuple[Region, ...]
    chunks: tuple[bytes, ...]
    extents: np.ndarray  #: EXTENT records sorted by addr, non-overlapping
    source: dict[str, Any] = field(default_factory=dict)
    #: every mapping of a process (data is stored for the writable ones only)
    maps: tuple[Region, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    #: (data pages, 2) u64: the digest of every data page of ``extents``, in extent order;
    #: None for a format 1 manifest (which has none)
    digests: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return "full" if self.parent is None else "delta"

    @property
    def npages(self) -> int:
        return int(self.extents["npages"].sum(dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return sum(r.length for r in self.regions)


def encode_manifest(m: Manifest, digest: Callable[[Any], bytes]) -> bytes:
    """The manifest blob: format 2, or format 1 for a manifest without page digests (a
    format 1 store being maintained)."""
    meta = {
        "name": m.name, "parent": m.parent, "created": m.created, "page_size": m.page_size,
        "regions": [r.to_json() for r in m.regions], "chunks": [c.hex() for c in m.chunks],
        "source": m.source, "maps": [r.to_json() for r in m.maps], "stats": m.stats,
    }
    js = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    ext = np.ascontiguousarray(m.extents, dtype=EXTENT)
    if m.digests is None:
        body = MANIFEST_HEADER_V1.pack(MANIFEST_MAGIC_V1, len(js), len(ext)) + js + \
            ext.tobytes()
        return body + digest(body)
    dig = np.ascontiguousarray(m.digests, dtype=PAGE_DIGEST).reshape(-1, 2)
    if len(dig) != data_pages(ext):
        raise SnapshotError(f"manifest {m.name}: {len(dig)} page digests for "
                            f"{data_pages(ext)} data pages")
    body = b"".join([MANIFEST_HEADER.pack(MANIFEST_MAGIC, len(js), len(ext), len(dig)), js,
                     ext.tobytes(), dig.tobytes()])
    return body + digest(body)


def _layout(body: bytes, name: str) -> tuple[int, int, int, int]:
    """(json offset, json length, extent count, digest count or -1 for format 1)."""
    if body[:8] == MANIFEST_MAGIC_V1 and len(body) >= MANIFEST_HEADER_V1.size:
        _, jlen, count = MANIFEST_HEADER_V1.unpack_from(body)
        hs, ndig = MANIFEST_HEADER_V1.size, -1
    elif body[:8] == MANIFEST_MAGIC and len(body) >= MANIFEST_HEADER.size:
        _, jlen, count, ndig = MANIFEST_HEADER.unpack_from(body)
        hs = MANIFEST_HEADER.size
    else:
        raise CorruptSnapshot("manifest layout is inconsistent (unknown magic)", snapshot=name)
    size = hs + jlen + count * EXTENT.itemsize + max(ndig, 0) * DIGEST
    if size != len(body):
        raise CorruptSnapshot("manifest layout is inconsistent", snapshot=name)
    return hs, jlen, count, ndig


def decode_manifest(blob: bytes, digest: Callable[[Any], bytes], name: str) -> Manifest:
    """Parse and check a manifest (format 1 or 2); any damage raises
    :class:`CorruptSnapshot`."""
    if len(blob) < MANIFEST_HEADER_V1.size + DIGEST:
        raise CorruptSnapshot(f"manifest truncated ({len(blob)} bytes)", snapshot=name)
    body, check = blob[:-DIGEST], blob[-DIGEST:]
    if digest(body) != check:
        raise CorruptSnapshot("manifest checksum mismatch (damaged or truncated)",
                              snapshot=name)
    hs, jlen, count, ndig = _layout(body, name)
    try:
        meta = json.loads(body[hs:hs + jlen])
        extents = np.frombuffer(body, EXTENT, count, hs + jlen).copy()
        digests = None if ndig < 0 else np.frombuffer(
            body, PAGE_DIGEST, 2 * ndig, hs + jlen + count * EXTENT.itemsize).reshape(-1, 2)
        m = Manifest(str(meta["name"]), meta["parent"], float(meta["created"]),
                     int(meta["page_size"]),
                     tuple(Region.from_json(r) for r in meta["regions"]),
                     tuple(bytes.fromhex(c) for c in meta["chunks"]), extents,
                     dict(meta.get("source", {})),
                     tuple(Region.from_json(r) for r in meta.get("maps", ())),
                     dict(meta.get("stats", {})), digests)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSnapshot(f"manifest does not parse ({exc})", snapshot=name) from None
    if m.name != name:
        raise CorruptSnapshot(f"manifest names itself {m.name!r}", snapshot=name)
    bad = (m.extents["chunk"] != ZERO) & (m.extents["chunk"] >= len(m.chunks))
    if bad.any():
        raise CorruptSnapshot("an extent refers to a chunk the manifest does not list",
                              snapshot=name)
    if digests is not None and len(digests) != data_pages(extents):
        raise CorruptSnapshot(f"{len(digests)} page digests for {data_pages(extents)} data "
                              "pages", snapshot=name)
    return m
