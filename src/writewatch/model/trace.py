"""The trace format: what a workload did to an address space, one operation per line.

A trace is a text file of JSON objects, one per line (JSON lines, UTF-8; ``.zst`` files are
zstandard-compressed). The first line is the header, every other line one operation. The same
format serves synthetic workloads (replayed op by op by the model), seeded random traces, and
recordings of real processes (``writewatch monitor --record FILE``), which carry mapping
snapshots and the pages found written per interval instead of individual writes.

Header (first line)::

    {"writewatch_trace": 1, "page_size": 4096, "source": "workload:merge", "seed": 1,
     "pid": null, "argv": null, "created": "2026-11-25T13:30:00Z", "meta": {}}

``writewatch_trace`` is the format version (this module reads version 1); ``page_size`` is the
page size every address and length in the trace is a multiple of. Other keys are optional.

Operations (one line each; ``"t"``, seconds since the start, is optional on every line;
addresses and lengths are integers, or strings "0x..."; ``tid`` defaults to 0)::

    {"op": "mmap", "addr": A, "len": L, "kind": "anon"|"shmem"|"memfd"|"file",
     "shared": false, "prot": "rw", "fixed": true, "file": "name", "offset": 0}
    {"op": "munmap", "addr": A, "len": L}
    {"op": "mremap", "addr": A, "len": L, "new_len": N, "new_addr": B}   # new_addr: move
    {"op": "mprotect", "addr": A, "len": L, "prot": "r"|"rw"|"none"}
    {"op": "madvise", "addr": A, "len": L, "advice": "DONTNEED"|"FREE"|"REMOVE"|"PAGEOUT"
                                                     |"HUGEPAGE"|"NOHUGEPAGE"}
    {"op": "write", "addr": A, "len": L, "tid": 0}        # every page of [A, A+L) written
    {"op": "write", "addr": A, "len": L, "tids": [0, 1]}  # the same pages by several threads
    {"op": "read", "addr": A, "len": L}
    {"op": "fork"}                                        # child shares memory copy-on-write
    {"op": "child_exit"}                                  # the last forked child exits
    {"op": "reclaim", "addr": A, "len": L}                # memory pressure: swap anon out,
                                                          # drop shmem/file PTEs (cache kept)
    {"op": "track", "addr": A, "len": L}                  # start tracking this range
    {"op": "collect"}                                     # the tracker collects (and re-arms)
    {"op": "exit"}

``"proc": N`` on any of these ops (except track / collect) makes the N-th forked process do
it (numbered by fork order, 1 for the first fork; 0, the default, is the traced process):
``{"op": "write", "addr": A, "len": L, "proc": 1}`` is the first child writing, which the
parent's tracker sees only through memory the two share; ``{"op": "exit", "proc": 1}`` ends
it. ``madvise`` also takes ``"COLLAPSE"`` (MADV_COLLAPSE: what khugepaged does).

Recorded real processes (written by the monitor; replayed as mapping changes plus writes)::

    {"op": "maps", "t": T, "maps": [[start, end, "rw-p", "anon"|"shmem"|"file"|path], ...]}
    {"op": "written", "t": T, "ranges": [[start, end], ...]}  # pages written in the interval
                                                              # that ends at T

``maps`` lines give the full writable mapping set at time T; the replayer turns differences
with the previous snapshot into munmap/mmap operations. ``written`` lines become writes
followed by a ``collect``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from .. import errors

VERSION = 1

#: op name -> required keys (beyond "op")
OPS: dict[str, tuple[str, ...]] = {
    "mmap": ("addr", "len"),
    "munmap": ("addr", "len"),
    "mremap": ("addr", "len", "new_len"),
    "mprotect": ("addr", "len", "prot"),
    "madvise": ("addr", "len", "advice"),
    "write": ("addr", "len"),
    "read": ("addr", "len"),
    "fork": (),
    "child_exit": (),
    "reclaim": ("addr", "len"),
    "track": ("addr", "len"),
    "collect": (),
    "exit": (),
    "maps": ("maps",),
    "written": ("ranges",),
}
KINDS = ("anon", "shmem", "memfd", "file")
ADVICE = ("DONTNEED", "FREE", "REMOVE", "PAGEOUT", "HUGEPAGE", "NOHUGEPAGE", "COLLAPSE")
PROTS = ("none", "r", "rw")
_INT_KEYS = ("addr", "len", "new_len", "new_addr", "offset", "tid", "proc")
#: user addresses are below this on every architecture the model describes (x86-64 LA57)
_USER_TOP = 1 << 56


class TraceError(errors.WriteWatchError, ValueError):
    """A trace file is malformed; ``line`` is its 1-based line number."""

    __module__ = "writewatch.model"

    def __init__(self, message: str, line: int | None = None, **kw: Any) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message,
                         hint=kw.pop("hint", "see docs/model.md, 'Trace format'"), **kw)


@dataclass(frozen=True)
class TraceHeader:
    page_size: int = 4096
    source: str = ""
    seed: int | None = None
    pid: int | None = None
    argv: list[str] | None = None
    created: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {"writewatch_trace": VERSION, **asdict(self)}
        return {k: v for k, v in d.items() if v is not None and v != {}}


def _int(v: Any, key: str, line: int | None) -> int:
    if isinstance(v, bool):
        raise TraceError(f"{key} must be an integer, not {v!r}", line)
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise TraceError(f"{key} must be an integer or a '0x...' string, not {v!r}", line)


def check_op(op: dict[str, Any], page_size: int, line: int | None = None) -> dict[str, Any]:
    """Validate one operation (and normalise its integers); returns it."""
    if not isinstance(op, dict) or "op" not in op:
        raise TraceError("an operation is an object with an 'op' key", line)
    name = op["op"]
    need = OPS.get(name) if isinstance(name, str) else None
    if need is None:
        raise TraceError(f"unknown op {name!r} (known: {', '.join(OPS)})", line)
    for k in need:
        if k not in op or (op[k] is None and k in _INT_KEYS):
            raise TraceError(f"{name} needs {k!r}", line)
    for k in _INT_KEYS:
        if k in op and op[k] is not None:
            op[k] = _int(op[k], k, line)
    for k in ("addr", "new_addr"):
        if k in op and op[k] is not None and not 0 <= op[k] < _USER_TOP:
            raise TraceError(f"{name}: {k}={op[k]:#x} is outside user space (0 to 2**56)",
                             line)
    for k in ("addr", "len", "new_len", "new_addr"):
        if k in op and op[k] is not None and op[k] % page_size:
            raise TraceError(f"{name}: {k}={op[k]:#x} is not a multiple of the page size "
                             f"{page_size}", line)
    if "len" in op and op["len"] <= 0:
        raise TraceError(f"{name}: len must be positive", line)
    if name == "mmap" and op.get("kind", "anon") not in KINDS:
        raise TraceError(f"mmap kind must be one of {KINDS}", line)
    if name == "madvise" and op["advice"] not in ADVICE:
        raise TraceError(f"madvise advice must be one of {ADVICE}", line)
    if name in ("mprotect", "mmap") and op.get("prot", "rw") not in PROTS:
        raise TraceError(f"prot must be one of {PROTS}", line)
    return op


def _open_text(path: str | os.PathLike[str], mode: str) -> IO[str]:
    p = os.fspath(path)
    if p.endswith(".zst"):
        import zstandard
        raw = open(p, mode + "b")  # noqa: SIM115
        stream: Any
        if mode == "r":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        else:
            stream = zstandard.ZstdCompressor().stream_writer(raw, closefd=True)
        return io.TextIOWrapper(stream, encoding="utf-8")
    return open(p, mode, encoding="utf-8")


def parse_header(text: str) -> TraceHeader:
    try:
        h = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TraceError(f"header is not JSON: {exc}", 1) from None
    if not isinstance(h, dict) or "writewatch_trace" not in h:
        raise TraceError("the first line must be a header with 'writewatch_trace'", 1)
    if h["writewatch_trace"] != VERSION:
        raise TraceError(f"trace version {h['writewatch_trace']!r}; this reader knows "
                         f"{VERSION}", 1)
    ps = h.get("page_size", 4096)
    if not isinstance(ps, int) or ps <= 0 or ps & (ps - 1):
        raise TraceError(f"page_size must be a power of two, not {ps!r}", 1)
    return TraceHeader(page_size=ps, source=h.get("source", ""), seed=h.get("seed"),
                       pid=h.get("pid"), argv=h.get("argv"), created=h.get("created"),
                       meta=h.get("meta") or {})


def _readable(it: Iterator[str]) -> Iterator[str]:
    """The lines of ``it``; what fails in reading them (not UTF-8 text, a damaged or cut
    zstd stream) is a TraceError naming the line."""
    n = 0
    while True:
        n += 1
        try:
            text = next(it)
        except StopIteration:
            return
        except Exception as exc:  # not UTF-8, an I/O error, zstandard.ZstdError
            raise TraceError(f"cannot be read: {type(exc).__name__}: {exc}", n,
                             hint="give a trace file: JSON lines, or one complete zstd "
                                  "stream of them (.zst)") from None
        yield text


def iter_lines(lines: Iterable[str]) -> tuple[TraceHeader, Iterator[dict[str, Any]]]:
    """Parse trace text: the header now, the operations lazily."""
    it = _readable(iter(lines))
    first = next(it, None)
    if first is None:
        raise TraceError("empty trace (no header)")
    header = parse_header(first)

    def ops() -> Iterator[dict[str, Any]]:
        for n, text in enumerate(it, start=2):
            if not text.strip():
                continue
            try:
                op = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise TraceError(f"not JSON: {exc}", n) from None
            yield check_op(op, header.page_size, n)

    return header, ops()


class TraceFile:
    """A trace file read as it is iterated: every iteration opens it again and streams its
    operations (what :func:`writewatch.lab.compare` replays once per design), so a trace
    larger than memory can be replayed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        with self._open() as f:
            self.header, _ = iter_lines(f)

    def _open(self) -> IO[str]:
        try:
            return _open_text(self.path, "r")
        except OSError as exc:
            raise TraceError(f"cannot open trace {os.fspath(self.path)!r}: {exc.strerror}",
                             hint="give an existing trace file (JSON lines)") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._open() as f:
            _, ops = iter_lines(f)
            yield from ops

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Trace:
    """A header and a list of operations, in memory."""

    def __init__(self, header: TraceHeader, ops: Iterable[dict[str, Any]]) -> None:
        self.header = header
        self.ops = list(ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.ops)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        try:
            f = _open_text(path, "r")
        except OSError as exc:
            raise TraceError(f"cannot open trace {os.fspath(path)!r}: {exc.strerror}",
                             hint="give an existing trace file (JSON lines)") from None
        with f:
            header, ops = iter_lines(f)
            return cls(header, ops)

    @staticmethod
    def open(path: str | os.PathLike[str]) -> TraceFile:
        """The trace at ``path``, streamed (see :class:`TraceFile`)."""
        return TraceFile(path)

    @classmethod
    def loads(cls, text: str) -> Trace:
        header, ops = iter_lines(text.splitlines())
        return cls(header, ops)

    def dump(self, path: str | os.PathLike[str]) -> None:
        with _open_text(path, "w") as f:
            self.write_to(f)

    def dumps(self) -> str:
        buf = io.StringIO()
        self.write_to(buf)
        return buf.getvalue()

    def write_to(self, f: IO[str]) -> None:
        f.write(json.dumps(self.header.to_json(), separators=(",", ":")) + "\n")
        for op in self.ops:
            f.write(json.dumps(op, separators=(",", ":")) + "\n")


class TraceWriter:
    """Append operations to a trace file as they happen (for recorders)::

        with TraceWriter(path, TraceHeader(page_size=4096, pid=pid)) as w:
            w.op("maps", t=0.0, maps=[[start, end, "rw-p", "anon"]])
            w.op("written", t=1.0, ranges=[[start, start + 4096]])
    """

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.header = header
        self._f = _open_text(path, "w")
        self._f.write(json.dumps(header.to_json(), separators=(",", ":")) + "\n")

    def op(self, name: str, **fields: Any) -> None:
        op = check_op({"op": name, **fields}, self.header.page_size)
        self._f.write(json.dumps(op, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
