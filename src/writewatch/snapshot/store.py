"""Where snapshots live: the :class:`Store` interface and the embedded :class:`DirStore`.

A store holds named immutable blobs (``chunks/<hex key>`` and ``snapshots/<name>``) and
publishes a snapshot with one atomic :meth:`Store.commit`. Callers use only this interface,
so an object store (S3-compatible: PUT/GET/LIST/DELETE, where a single-object PUT is atomic)
fits behind it: ``put`` = PUT, ``commit`` = PUT of the manifest after the chunk PUTs
returned, ``lock`` = a conditional PUT of a lock object.
"""

from __future__ import annotations

import abc
import errno as E
import fcntl
import json
import os
import secrets
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import errors
from ..kernel import _sys
from .errors import BadStorePath, SnapshotError, StoreLocked
from .format import default_hash, hasher

__all__ = ["BlobNotFound", "DirStore", "Store", "open_store"]

Buffers = Any  # bytes-like, or a list of bytes-like written back to back


class BlobNotFound(SnapshotError, KeyError):
    """No blob of that name."""

    __module__ = "writewatch.snapshot"

    def __str__(self) -> str:
        return SnapshotError.__str__(self)


class Store(abc.ABC):
    """Named immutable blobs plus an atomic commit and a single-writer lock."""

    #: name of the content hash (see :func:`writewatch.snapshot.format.hasher`)
    hash_name: str
    #: a human-readable location
    url: str

    #: the store's format version (see DirStore.FORMAT); format 1 stores are read-only
    format: int = 2

    @abc.abstractmethod
    def put(self, name: str, data: Buffers, done: Callable[[], None] | None = None) -> None:
        """Store a blob. It may become visible before :meth:`commit`, possibly incomplete
        until then (a chunk is only ever read through a committed manifest, and one written
        by a writer that crashed is garbage); it is durable once a later :meth:`commit`
        returns. ``done`` is called (from any thread) once the store no longer reads
        ``data``."""

    @abc.abstractmethod
    def get(self, name: str) -> bytearray:
        """The blob's bytes; :class:`BlobNotFound` when there is none."""

    def get_into(self, name: str, buf: bytearray) -> memoryview:
        """The blob's bytes, read into ``buf`` when it is large enough (saves an allocation
        and its page faults per blob); the returned view is valid until ``buf`` is reused."""
        return memoryview(self.get(name))

    def read_into(self, name: str, buffers: Callable[[int], Sequence[Any]],
                  each: Callable[[Any], None] | None = None) -> int:
        """Read the blob into the buffers ``buffers(size)`` returns (written back to back;
        the bytes past their total are not read), calling ``each(buffer)`` once a buffer is
        filled (while it is still in the CPU's cache). Returns the blob's size. A directory
        store reads straight into them with preadv(2): no intermediate copy."""
        data = memoryview(self.get(name))
        pos = 0
        for b in buffers(data.nbytes):
            mv = memoryview(b).cast("B")
            n = min(mv.nbytes, data.nbytes - pos)
            mv[:n] = data[pos:pos + n]
            pos += n
            if each is not None:
                each(b)
        return data.nbytes

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the blobs under ``prefix`` (``"chunks/"`` or ``"snapshots/"``), sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove a blob (no error when absent)."""

    @abc.abstractmethod
    def commit(self, name: str, data: Buffers) -> None:
        """Make every blob put so far durable, then publish ``name`` atomically: after a crash
        it is either absent or complete, and if present every blob put before it is too."""

    @abc.abstractmethod
    def acquire(self) -> None:
        """Take the writer lock, or raise :class:`StoreLocked` when another writer holds it."""

    @abc.abstractmethod
    def release(self) -> None: ...

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _buffers(data: Buffers) -> list[Any]:
    return list(data) if isinstance(data, (list, tuple)) else [data]


class DirStore(Store):
    """A directory: ``chunks/<2 hex>/<key>``, ``snapshots/<name>``, ``tmp/``, ``lock``,
    ``STORE`` (format and hash). Files are created 0600 and directories 0700: memory images
    hold secrets. A chunk is written in place and fsynced; a manifest is written to
    ``tmp/``, fsynced and renamed into ``snapshots/``, so no reader ever sees a partial
    snapshot, and a chunk is reachable only once the manifest naming it is published.
    :meth:`commit` fsyncs the directories that gained entries before publishing the manifest
    (rename is atomic on POSIX file systems, and the directory fsync makes it durable:
    ext4/xfs semantics, fsync(2))."""

    FORMAT = 2
    #: formats this code reads (format 1: no page digests, so no deduplication: read-only)
    READABLE = (1, 2)
    _ENTRIES = frozenset({"STORE", "chunks", "snapshots", "tmp", "lock"})

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 hash: str | None = None, fsync: bool = True, workers: int = 4) -> None:
        self._lock_fd = -1
        self._lock_finalizer: weakref.finalize[Any, Any] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.path = _check_path(path)
        self.url = self.path
        self.fsync = fsync
        self._dirty_dirs: set[str] = set()
        self._mutex = threading.Lock()
        # puts run on worker threads (write + fsync; each fsync waits for the disk, several
        # in flight share journal commits); at most 2 * workers blobs in flight
        self._workers = max(1, int(workers))
        self._slots = threading.BoundedSemaphore(2 * self._workers)
        self._pending: dict[str, Future[None]] = {}
        meta_path = os.path.join(self.path, "STORE")
        if not os.path.exists(meta_path):
            if not create:
                raise SnapshotError(f"{self.path} is not a snapshot store (no STORE file)",
                                    hint="give the directory a snapshot was saved to")
            self._create(hash or default_hash())
        try:
            with open(meta_path, "rb") as f:
                meta = json.loads(f.read())
            self.hash_name = str(meta["hash"])
            self.format = int(meta["format"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{meta_path} is unreadable ({exc})") from None
        if self.format not in self.READABLE:
            raise SnapshotError(f"{self.path}: store format {self.format} is not supported "
                                f"(this version reads formats "
                                f"{', '.join(map(str, self.READABLE))})",
                                hint="use the writewatch version that wrote it")
        if hash is not None and hash != self.hash_name:
            raise SnapshotError(f"store {self.path} hashes with {self.hash_name}, not {hash}")
        hasher(self.hash_name)  # fail early when the hash is unavailable

    def _create(self, hash_name: str) -> None:
        """Make the layout and publish ``STORE`` with link(2), which never replaces: when
        several processes create one store at once each makes the same directories, the
        first link wins and the others read its STORE (and then meet its lock)."""
        hasher(hash_name)
        try:
            if os.path.isdir(self.path):
                extra = sorted(n for n in os.listdir(self.path)
                               if n not in self._ENTRIES and not n.startswith(".STORE."))
                if extra:
                    raise BadStorePath(
                        f"{self.path} is a directory with other files ({', '.join(extra[:3])}"
                        f"{'...' if len(extra) > 3 else ''}), not a snapshot store",
                        hint="give a new or empty directory, or an existing store")
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            for sub in ("chunks", "snapshots", "tmp"):
                _mkdir(os.path.join(self.path, sub))
            # every chunk subdirectory up front: a save then never adds one (and never has
            # chunks/ itself to fsync)
            for i in range(256):
                _mkdir(os.path.join(self.path, "chunks", f"{i:02x}"))
            meta = json.dumps({"format": self.FORMAT, "hash": hash_name}).encode()
            tmp = os.path.join(self.path, f".STORE.{secrets.token_hex(4)}")
            try:
                self._write_file(tmp, [meta])
                try:
                    os.link(tmp, os.path.join(self.path, "STORE"))
                except FileExistsError:
                    pass  # another process created it first: its STORE is the store's
            finally:
                _unlink(tmp)
            self._sync_dir(self.path)
        except OSError as exc:
            raise _path_error(self.path, exc) from None

    # -- paths ---------------------------------------------------------------------------------
    def _file(self, name: str) -> str:
        kind, _, leaf = name.partition("/")
        if kind not in ("chunks", "snapshots") or not leaf or "/" in leaf or leaf[0] == ".":
            raise SnapshotError(f"bad blob name {name!r}")
        if kind == "chunks":
            return os.path.join(self.path, kind, leaf[:2], leaf)
        return os.path.join(self.path, kind, leaf)

    # -- blobs -----------------------------------------------------------------------------------
    def _write_atomic(self, final: str, bufs: list[Any]) -> None:
        """Write to tmp/, fsync, rename into place: a visible blob is always complete."""
        tmp = os.path.join(self.path, "tmp", f"{os.path.basename(final)}.{secrets.token_hex(4)}")
        try:
            self._write_file(tmp, bufs)
        except BaseException:
            _unlink(tmp)
            raise
        try:
            _sys.os_call(f"rename {tmp}", os.rename, tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        with self._mutex:
            self._dirty_dirs.add(os.path.dirname(final))

    def _write_in_place(self, final: str, bufs: list[Any]) -> None:
        """A chunk: written (and fsynced) under its final name; no rename. Until a committed
        manifest names it nobody reads it, and a partial one a crash left is rewritten by the
        next save that needs it (opened with O_TRUNC) or deleted by gc."""
        self._write_file(final, bufs, exclusive=False)
        with self._mutex:
            self._dirty_dirs.add(os.path.dirname(final))

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ww-store")
        return self._pool.submit(fn, *args)

    def put(self, name: str, data: Buffers, done: Callable[[], None] | None = None) -> None:
        """Write the blob on a worker thread (the buffers must not change until ``done`` is
        called); errors surface at :meth:`flush` or :meth:`commit`."""
        final = self._file(name)
        d = os.path.dirname(final)
        if not os.path.isdir(d):
            _mkdir(d)
            with self._mutex:
                self._dirty_dirs.add(os.path.dirname(d))
        bufs = _buffers(data)
        write = self._write_in_place if name.startswith("chunks/") else self._write_atomic
        self._slots.acquire()

        def job() -> None:
            try:
                write(final, bufs)
            finally:
                self._slots.release()
                if done is not None:
                    done()

        try:
            fut = self._submit(job)
        except BaseException:
            self._slots.release()
            if done is not None:
                done()
            raise
        with self._mutex:
            self._pending[name] = fut

    def flush(self) -> None:
        """Wait for every put in flight; raise the first error."""
        with self._mutex:
            pending, self._pending = list(self._pending.values()), {}
        first: BaseException | None = None
        for f in pending:
            exc = f.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def get(self, name: str) -> bytearray:
        mv = self.get_into(name, bytearray())  # reads into a new buffer of the blob's size
        data = mv.obj
        assert isinstance(data, bytearray)
        return data if len(mv) == len(data) else data[:len(mv)]

    def _open_blob(self, name: str) -> tuple[int, str]:
        """A descriptor of the blob (a put of it in flight finished first) and its path."""
        fut = self._pending.get(name)
        if fut is not None:
            fut.result()
        path = self._file(name)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
        except (FileNotFoundError, NotADirectoryError):  # ENOTDIR: a file where a dir was
            raise BlobNotFound(f"{self.path}: no blob {name}") from None
        except OSError as exc:
            _sys.raise_errno(exc.errno or E.EIO, f"open {path}")
            raise

    def get_into(self, name: str, buf: bytearray) -> memoryview:
        fd, path = self._open_blob(name)
        try:
            size = os.fstat(fd).st_size
            mv = memoryview(buf) if len(buf) >= size else memoryview(bytearray(size))
            got = 0
            while got < size:
                n = _sys.os_call(f"read {path}", os.readv, fd, [mv[got:size]])
                if n == 0:
                    break
                got += n
            return mv[:got]
        finally:
            _sys.close(fd)

    #: bytes read per preadv(2) call: small enough that what was read is still in the L2
    #: cache when ``each`` (a checksum) reads it (benchmarks/bench_snapshot.py)
    READ_BATCH = 512 << 10

    def read_into(self, name: str, buffers: Callable[[int], Sequence[Any]],
                  each: Callable[[Any], None] | None = None) -> int:
        fd, path = self._open_blob(name)
        try:
            size = os.fstat(fd).st_size
            given = list(buffers(size))
            bufs = [memoryview(b).cast("B") for b in given]
            pos, i = 0, 0
            while i < len(bufs) and pos < size:
                # a batch of buffers (at most IOV_MAX = 1024, limits.h) of about READ_BATCH
                j, total = i, 0
                while j < len(bufs) and j - i < 1024 and (total < self.READ_BATCH or j == i):
                    total += bufs[j].nbytes
                    j += 1
                got = self._preadv(fd, path, bufs[i:j], pos)
                pos += got
                if each is not None:
                    for b in given[i:j]:
                        each(b)
                if got < total:
                    break  # the blob ended
                i = j
            return size
        finally:
            _sys.close(fd)

    @staticmethod
    def _preadv(fd: int, path: str, bufs: list[memoryview], pos: int) -> int:
        """preadv(2) until ``bufs`` are full or the file ends; the bytes read."""
        want = sum(b.nbytes for b in bufs)
        done = 0
        while done < want:
            n = _sys.os_call(f"read {path}", os.preadv, fd, bufs, pos + done)
            if n == 0:
                break
            done += n
            while bufs and n >= bufs[0].nbytes:
                n -= bufs[0].nbytes
                bufs = bufs[1:]
            if n:
                bufs = [bufs[0][n:], *bufs[1:]]
        return done

    def exists(self, name: str) -> bool:
        return name in self._pending or os.path.exists(self._file(name))

    def list(self, prefix: str) -> list[str]:
        kind = prefix.rstrip("/")
        if kind != "snapshots":
            self.flush()  # chunk puts in flight are listed once they are written
        root = os.path.join(self.path, kind)
        if kind == "snapshots":
            return sorted(f"snapshots/{n}" for n in _listdir(root) if not n.startswith("."))
        if kind == "chunks":
            return sorted(f"chunks/{n}" for d in _listdir(root)
                          for n in _listdir(os.path.join(root, d)))
        raise SnapshotError(f"bad prefix {prefix!r}")

    def delete(self, name: str) -> None:
        fut = self._pending.pop(name, None)
        if fut is not None:
            fut.exception()
        path = self._file(name)
        _unlink(path)
        self._dirty_dirs.add(os.path.dirname(path))

    def commit(self, name: str, data: Buffers) -> None:
        final = self._file(name)
        tmp = os.path.join(self.path, "tmp", f"{os.path.basename(final)}.{secrets.token_hex(4)}")
        # the manifest's bytes are written and fsynced while the chunks finish (it is not
        # visible until renamed); then the new names' directory entries are made durable, and
        # only then does the rename publish it
        wrote = self._submit(self._write_file, tmp, _buffers(data))
        try:
            try:
                self.flush()  # every chunk written and fsynced
            finally:
                wrote.result()
            with self._mutex:
                dirs, self._dirty_dirs = self._dirty_dirs, set()
            for f in [self._submit(self._sync_dir, d) for d in dirs] if self.fsync else []:
                f.result()
            _sys.os_call(f"rename {tmp}", os.rename, tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir(os.path.dirname(final))

    def _write_file(self, path: str, bufs: Sequence[Any], exclusive: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else
                                                             os.O_TRUNC)
        fd = _sys.os_call(f"open {path}", os.open, path, flags, 0o600)
        try:
            for b in bufs:
                mv = memoryview(b).cast("B")
                while mv.nbytes:
                    n = _sys.os_call(f"write {path}", os.write, fd, mv)
                    mv = mv[n:]
            if self.fsync:
                _sys.os_call(f"fsync {path}", os.fsync, fd)
        finally:
            _sys.close(fd)

    def sync(self) -> None:
        """Finish every put and fsync every directory that gained or lost an entry."""
        self.flush()
        with self._mutex:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        if self.fsync:
            for f in [self._submit(self._sync_dir, d) for d in dirs]:
                f.result()

    def _sync_dir(self, d: str) -> None:
        if not self.fsync:
            return
        fd = _sys.os_call(f"open {d}", os.open, d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _sys.os_call(f"fsync {d}", os.fsync, fd)
        finally:
            _sys.close(fd)

    # -- lock ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        if self._lock_fd >= 0:
            return
        path = os.path.join(self.path, "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _path_error(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            _sys.close(fd)
            if exc.errno in (E.EWOULDBLOCK, E.EAGAIN):
                holder = _read_small(path)
                raise StoreLocked(
                    f"store {self.path} is locked by another writer{holder}",
                    hint="one writer at a time: wait for it, or use another store") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f" (pid {os.getpid()})".encode(), 0)
        self._lock_fd = fd
        self._lock_finalizer = weakref.finalize(self, _leaked_lock, fd, self.path)
        # a writer that died left its temporary files: nobody else can be writing now
        tmpdir = os.path.join(self.path, "tmp")
        for n in _listdir(tmpdir):
            _unlink(os.path.join(tmpdir, n))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self.release()

    def release(self) -> None:
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            if self._lock_finalizer is not None:
                self._lock_finalizer.detach()
                self._lock_finalizer = None
            _sys.close(fd)  # closing the last descriptor drops the flock

    @property
    def locked(self) -> bool:
        return self._lock_fd >= 0

    def __repr__(self) -> str:
        return f"<DirStore {self.path} {self.hash_name}>"


def _leaked_lock(fd: int, path: str) -> None:
    warnings.warn(f"the writer lock of store {path} was never released (close the "
                  "Snapshotter or store); released now", ResourceWarning, stacklevel=2)
    try:
        os.close(fd)
    except OSError:
        pass


def _check_path(path: Any) -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise errors.InvalidTarget(f"a store path must be a str or path, not "
                                   f"{type(path).__name__}") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p:
        raise BadStorePath("the store path is empty", hint="give a directory, e.g. "
                           "/var/tmp/snapshots")
    if "\0" in p:
        raise BadStorePath(f"the store path {p!r} contains a NUL byte")
    if os.path.exists(p) and not os.path.isdir(p):
        kind = "a regular file" if os.path.isfile(p) else "not a directory"
        raise BadStorePath(f"{p} is {kind}, not a snapshot store directory",
                           hint="give a new or empty directory, or an existing store")
    return str(p)


def _path_error(path: str, exc: OSError) -> errors.WriteWatchError:
    """The typed error for an OSError met while creating or opening the store ``path``."""
    where = f" ({exc.filename})" if exc.filename and exc.filename != path else ""
    if exc.errno in (E.EACCES, E.EPERM, E.EROFS):
        return errors.PermissionDenied(
            f"cannot create snapshot store {path}{where}: {os.strerror(exc.errno)}",
            hint="choose a directory this user may write (not /sys or /proc)")
    if exc.errno == E.ENOTDIR:
        return BadStorePath(f"cannot create snapshot store {path}: a part of the path is a "
                            "file, not a directory", hint="give a path under a directory")
    return BadStorePath(f"cannot create snapshot store {path}{where}: "
                        f"{os.strerror(exc.errno or 0)}",
                        hint="give a directory on a regular file system")


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _listdir(path: str) -> Iterable[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return ()


def _read_small(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(64)
    except OSError:
        return ""


def open_store(store: Store | str | os.PathLike[str], *, create: bool = True,
               **options: Any) -> Store:
    """A :class:`Store` from a store object or a directory path."""
    if isinstance(store, Store):
        return store
    return DirStore(store, create=create, **options)
