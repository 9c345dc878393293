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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..kernel import _sys
from .errors import SnapshotError, StoreLocked
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

    @abc.abstractmethod
    def put(self, name: str, data: Buffers, done: Callable[[], None] | None = None) -> None:
        """Store a blob. It may become visible before :meth:`commit`, but is only guaranteed
        durable once a later :meth:`commit` returns. Re-putting a name replaces it atomically.
        ``done`` is called (from any thread) once the store no longer reads ``data``."""

    @abc.abstractmethod
    def get(self, name: str) -> bytearray:
        """The blob's bytes; :class:`BlobNotFound` when there is none."""

    def get_into(self, name: str, buf: bytearray) -> memoryview:
        """The blob's bytes, read into ``buf`` when it is large enough (saves an allocation
        and its page faults per blob); the returned view is valid until ``buf`` is reused."""
        return memoryview(self.get(name))

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
    hold secrets. Every blob is written to ``tmp/``, fsynced and renamed into place, so no
    reader ever sees a partial blob; :meth:`commit` fsyncs the directories that received
    renames before publishing the manifest (rename is atomic on POSIX file systems, and the
    directory fsync makes it durable: ext4/xfs semantics, fsync(2))."""

    FORMAT = 1

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 hash: str | None = None, fsync: bool = True, workers: int = 4) -> None:
        self.path = os.fspath(path)
        self.url = self.path
        self.fsync = fsync
        self._lock_fd = -1
        self._dirty_dirs: set[str] = set()
        self._mutex = threading.Lock()
        # puts run on worker threads (write + fsync + rename; each fsync waits for the disk,
        # several in flight share journal commits); at most 2 * workers blobs in flight
        self._workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
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
            if int(meta["format"]) != self.FORMAT:
                raise SnapshotError(f"{self.path}: store format {meta['format']} is not "
                                    f"supported (this is {self.FORMAT})")
        except (OSError, ValueError, KeyError) as exc:
            raise SnapshotError(f"{meta_path} is unreadable ({exc})") from None
        if hash is not None and hash != self.hash_name:
            raise SnapshotError(f"store {self.path} hashes with {self.hash_name}, not {hash}")
        hasher(self.hash_name)  # fail early when the hash is unavailable

    def _create(self, hash_name: str) -> None:
        hasher(hash_name)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for sub in ("chunks", "snapshots", "tmp"):
            _mkdir(os.path.join(self.path, sub))
        meta = json.dumps({"format": self.FORMAT, "hash": hash_name}).encode()
        self._write_atomic(os.path.join(self.path, "STORE"), [meta])
        self._sync_dir(self.path)

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

    def _submit(self, fn: Any, *args: Any) -> Future[None]:
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
        self._slots.acquire()

        def job() -> None:
            try:
                self._write_atomic(final, bufs)
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

    def get_into(self, name: str, buf: bytearray) -> memoryview:
        fut = self._pending.get(name)
        if fut is not None:
            fut.result()
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(f"{self.path}: no blob {name}") from None
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

    def exists(self, name: str) -> bool:
        return name in self._pending or os.path.exists(self._file(name))

    def list(self, prefix: str) -> list[str]:
        self.flush()
        kind = prefix.rstrip("/")
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
        self.flush()  # every chunk file written, fsynced and renamed
        final = self._file(name)
        # the new names' directory entries and the manifest's bytes, both durable before the
        # manifest's rename publishes it
        with self._mutex:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        futs = [self._submit(self._sync_dir, d) for d in dirs] if self.fsync else []
        tmp = os.path.join(self.path, "tmp", f"{os.path.basename(final)}.{secrets.token_hex(4)}")
        try:
            self._write_file(tmp, _buffers(data))
            for f in futs:
                f.result()
            _sys.os_call(f"rename {tmp}", os.rename, tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir(os.path.dirname(final))

    def _write_file(self, path: str, bufs: Sequence[Any]) -> None:
        fd = _sys.os_call(f"open {path}", os.open, path,
                          os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
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
        fd = _sys.os_call(f"open {path}", os.open, path,
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
            _sys.close(fd)  # closing the last descriptor drops the flock

    @property
    def locked(self) -> bool:
        return self._lock_fd >= 0

    def __repr__(self) -> str:
        return f"<DirStore {self.path} {self.hash_name}>"


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


def iter_chunks(store: Store) -> Iterator[bytes]:
    for name in store.list("chunks/"):
        yield bytes.fromhex(name.partition("/")[2])
