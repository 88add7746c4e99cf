"""Storage behind one small interface: local paths and ``gs://`` URIs.

Publishing is atomic on both:

* locally (:mod:`aitasks.platform.files`), data goes to a hidden temp file in the target directory,
  is fsynced, then renamed over the target (``os.replace``) and the directory is fsynced: a reader
  sees the old file or the new one, never a torn one, even when the writer is killed mid-write. A
  create-only write links the temp file into place (``os.link`` fails if the target exists), so two
  racing writers agree on one winner;
* on GCS, an object upload becomes visible at once when it completes; create-only writes use
  ``if_generation_match=0`` and compare-and-swap writes use the generation read before, so the
  client library's automatic retries are safe and races have one winner.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from aitasks.platform.files import atomic_path
from aitasks.runtime.errors import (
    PreconditionFailedError,
    ServiceUnavailableError,
    UnsafePathError,
)
from aitasks.runtime.hashing import sha256_file, sha256_tree

GCS_SCHEME = "gs://"


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def check_relative_key(key: str) -> str:
    """Refuse keys that could escape the root they are joined to (``..``, absolute, NUL, backslash)."""
    if not key or "\x00" in key or "\\" in key:
        raise UnsafePathError(f"unsafe key {key!r}: empty, NUL byte or backslash")
    p = PurePosixPath(key)
    if p.is_absolute() or any(part in ("..", "") for part in key.split("/")):
        raise UnsafePathError(f"unsafe key {key!r}: must be relative without '..' or empty segments")
    return key


def join_uri(root: str, *keys: str) -> str:
    """Join safe relative ``keys`` under ``root`` (a local path or a ``gs://`` URI)."""
    for k in keys:
        for part in k.split("/"):
            if part == "..":
                raise UnsafePathError(f"unsafe key {k!r}: '..' escapes {root!r}")
        check_relative_key(k)
    if is_gcs(root):
        return "/".join([root.rstrip("/"), *keys])
    return str(Path(root).joinpath(*keys))


# ------------------------------------------------------------------------------------ confinement
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
FILE_SCHEME = "file://"


def normalize_uri(uri: str) -> str:
    """The form in which ``uri`` is opened: ``gs://`` kept, ``file:///path`` turned into ``/path``.

    Nothing is percent-decoded (the storage opens the same string). ``file://`` URIs with a host and
    every other scheme are refused: the local storage would open them as odd relative paths.

    Raises:
        UnsafePathError: A NUL byte, an unsupported scheme, a ``file://`` URI that is not ``file:///abs``,
            or a ``gs://`` URI with an empty bucket or ``.``/``..`` segments.
    """
    if "\x00" in uri:
        raise UnsafePathError("URI contains a NUL byte")
    if is_gcs(uri):
        bucket, _, key = uri[len(GCS_SCHEME) :].partition("/")
        if not bucket or any(part in (".", "..") for part in key.split("/")):
            raise UnsafePathError(f"{uri!r}: a gs:// URI needs a bucket and no '.' or '..' segments")
        return uri
    if uri.startswith(FILE_SCHEME):
        path = uri[len(FILE_SCHEME) :]
        if not path.startswith("/"):
            raise UnsafePathError(f"{uri!r}: only file:///absolute/path is supported (no host, no relative path)")
        return path
    m = _SCHEME.match(uri)
    if m:
        raise UnsafePathError(f"{uri!r}: unsupported URI scheme {m.group(1)!r} (a local path, file:/// or gs://)")
    return uri


def _gcs_parts(uri: str) -> tuple[str, list[str]]:
    bucket, _, key = uri[len(GCS_SCHEME) :].partition("/")
    return bucket, [p for p in key.split("/") if p]


def _within(target: str, root: str) -> bool:
    """Whether the normalised ``target`` lies at or under ``root`` (local: both fully resolved)."""
    if is_gcs(target) != is_gcs(root):
        return False
    if is_gcs(target):
        (tb, tparts), (rb, rparts) = _gcs_parts(target), _gcs_parts(root)
        return tb == rb and tparts[: len(rparts)] == rparts
    return os.path.commonpath([target, root]) == root


def resolve_location(uri: str) -> str:
    """``uri`` normalised (see :func:`normalize_uri`); a local path made absolute with every symlink resolved."""
    norm = normalize_uri(uri)
    return norm if is_gcs(norm) else os.path.realpath(norm)


def confine(uri: str, roots: Sequence[str]) -> str:
    """Check that ``uri`` lies inside one of ``roots``, after normalisation and symlink resolution.

    A local path is resolved the way the kernel will open it (``..`` collapsed, every symbolic link
    followed, relative paths against the working directory), so ``root/../etc``, ``/etc/passwd``,
    ``file:///etc/shadow`` and a link inside the root that points outside are all refused. Empty roots
    are ignored. The message names the URI and the roots, never anything read from a file.

    Returns:
        The resolved location (an absolute real path, or the ``gs://`` URI).

    Raises:
        UnsafePathError: ``uri`` is malformed (see :func:`normalize_uri`) or lies outside every root.
    """
    target = resolve_location(uri)
    resolved = [resolve_location(r.rstrip("/") or "/") for r in roots if r]
    if any(_within(target, r) for r in resolved):
        return target
    shown = ", ".join(r for r in roots if r) or "(none)"
    lexical = os.path.normpath(os.path.join(os.getcwd(), normalize_uri(uri)))  # noqa: PTH109, PTH118
    how = "" if is_gcs(target) or target == lexical else " (through a symbolic link)"
    raise UnsafePathError(f"{uri!r} resolves outside the allowed roots{how}: {shown}")


@dataclass(frozen=True)
class Version:
    """What a compare-and-swap compares: a GCS generation, or the sha256 of a local file's content."""

    token: str | None  # None: the object does not exist


class Storage(Protocol):
    """The storage interface every task uses."""

    def exists(self, uri: str) -> bool: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None: ...
    def version(self, uri: str) -> Version: ...
    def compare_and_swap(self, uri: str, data: bytes, expected: Version) -> None: ...
    def put_file(self, local: Path, uri: str, *, if_absent: bool = False) -> None: ...
    def get_file(self, uri: str, local: Path) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, uri: str) -> None: ...
    def content_hash(self, uri: str) -> str: ...


class LocalStorage:
    """Local filesystem storage with atomic publish."""

    def _path(self, uri: str) -> Path:
        if is_gcs(uri):
            raise UnsafePathError(f"{uri!r} is a GCS URI, not a local path")
        if "\x00" in uri:
            raise UnsafePathError("path contains a NUL byte")
        return Path(uri.removeprefix("file://"))

    def exists(self, uri: str) -> bool:
        return self._path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    @contextlib.contextmanager
    def publishing(
        self, uri: str, *, if_absent: bool = False, sync_dir: bool = True, synced: bool = False
    ) -> Iterator[Path]:
        """Yield a hidden temp path beside ``uri``; on success fsync it and publish it atomically.

        The local primitive is :func:`aitasks.platform.files.atomic_path`. On an exception nothing is
        published and the temp file is removed. ``sync_dir=False`` skips the directory fsync: only for
        markers whose loss in a power cut is harmless. ``synced=True``: the caller already fsynced the
        temp file (saves reopening it on the hot path).

        Raises:
            PreconditionFailedError: ``if_absent`` and the target exists.
        """
        target = self._path(uri)
        try:
            with atomic_path(target, exclusive=if_absent, fsync=not synced, sync_dir=sync_dir) as tmp:
                yield tmp
        except FileExistsError as exc:
            if if_absent and target.exists():
                raise PreconditionFailedError(f"{target} already exists") from exc
            raise

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False, sync_dir: bool = True) -> None:
        """Atomic write (see :meth:`publishing`)."""
        with self.publishing(uri, if_absent=if_absent, sync_dir=sync_dir, synced=True) as tmp, tmp.open("xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def put_file(self, local: Path, uri: str, *, if_absent: bool = False) -> None:
        with self.publishing(uri, if_absent=if_absent) as tmp:
            shutil.copyfile(local, tmp)

    def get_file(self, uri: str, local: Path) -> None:
        src = self._path(uri)
        if src.resolve() != local.resolve():
            shutil.copyfile(src, local)

    def version(self, uri: str) -> Version:
        p = self._path(uri)
        return Version(sha256_file(p) if p.exists() else None)

    def compare_and_swap(self, uri: str, data: bytes, expected: Version) -> None:
        """Replace ``uri`` only if its content is still ``expected``; serialised by an flock."""
        import fcntl

        target = self._path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = target.parent / f".{target.name}.lock"
        with lock.open("a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                if self.version(uri) != expected:
                    raise PreconditionFailedError(f"{target} changed since it was read")
                self.write_bytes(uri, data, if_absent=expected.token is None)
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def list(self, prefix: str) -> list[str]:
        p = self._path(prefix)
        if p.is_dir():
            return sorted(str(q) for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        return sorted(str(q) for q in p.parent.glob(p.name + "*") if q.is_file() and not q.name.startswith("."))

    def delete(self, uri: str) -> None:
        p = self._path(uri)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def content_hash(self, uri: str) -> str:
        p = self._path(uri)
        if p.is_dir():
            return "sha256-tree:" + sha256_tree(p)
        return "sha256:" + sha256_file(p)


def _split_gcs(uri: str) -> tuple[str, str]:
    rest = uri[len(GCS_SCHEME) :]
    bucket, _, name = rest.partition("/")
    if not bucket or not name:
        raise UnsafePathError(f"{uri!r} is not gs://bucket/object")
    check_relative_key(name)
    return bucket, name


class GCSStorage:
    """Google Cloud Storage with generation preconditions on every write that must not race.

    ``client`` is a ``google.cloud.storage.Client`` (or a test double with the same small surface).
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def _blob(self, uri: str) -> Any:
        bucket, name = _split_gcs(uri)
        return self._client.bucket(bucket).blob(name)

    @staticmethod
    def _wrap(exc: Exception, uri: str) -> Exception:
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.PreconditionFailed):
            return PreconditionFailedError(f"{uri}: generation precondition failed")
        if isinstance(exc, gexc.NotFound):
            return FileNotFoundError(uri)
        if isinstance(exc, gexc.ServiceUnavailable | gexc.TooManyRequests | gexc.InternalServerError):
            return ServiceUnavailableError(f"GCS unavailable for {uri}: {exc}")
        return exc

    def exists(self, uri: str) -> bool:
        return bool(self._blob(uri).exists())

    def read_bytes(self, uri: str) -> bytes:
        try:
            return bytes(self._blob(uri).download_as_bytes())
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        kwargs = {"if_generation_match": 0} if if_absent else {}
        try:
            self._blob(uri).upload_from_string(data, **kwargs)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def put_file(self, local: Path, uri: str, *, if_absent: bool = False) -> None:
        kwargs = {"if_generation_match": 0} if if_absent else {}
        try:
            self._blob(uri).upload_from_filename(str(local), **kwargs)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def get_file(self, uri: str, local: Path) -> None:
        try:
            self._blob(uri).download_to_filename(str(local))
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def version(self, uri: str) -> Version:
        blob = self._blob(uri)
        try:
            blob.reload()
        except Exception as exc:
            wrapped = self._wrap(exc, uri)
            if isinstance(wrapped, FileNotFoundError):
                return Version(None)
            raise wrapped from exc
        return Version(str(blob.generation))

    def compare_and_swap(self, uri: str, data: bytes, expected: Version) -> None:
        gen = 0 if expected.token is None else int(expected.token)
        try:
            self._blob(uri).upload_from_string(data, if_generation_match=gen)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def list(self, prefix: str) -> list[str]:
        bucket, name = _split_gcs(prefix.rstrip("/"))
        name = name + "/" if prefix.endswith("/") else name
        return sorted(f"gs://{bucket}/{b.name}" for b in self._client.list_blobs(bucket, prefix=name))

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                self._blob(uri).delete()
            except Exception as exc:
                raise self._wrap(exc, uri) from exc

    def content_hash(self, uri: str) -> str:
        blob = self._blob(uri)
        try:
            blob.reload()
        except Exception as exc:
            raise self._wrap(exc, uri) from exc
        if blob.md5_hash:  # absent on composite objects
            return "md5:" + str(blob.md5_hash)
        return "crc32c:" + str(blob.crc32c)


def storage_for(uri: str, *, gcs_client: Any | None = None) -> Storage:
    """The storage that serves ``uri``. The GCS client is created only when a ``gs://`` URI needs it."""
    if is_gcs(uri):
        if gcs_client is None:
            from google.cloud import storage as gcs

            gcs_client = gcs.Client()
        return GCSStorage(gcs_client)
    return LocalStorage()


@contextlib.contextmanager
def local_copy(uri: str, storage: Storage | None = None) -> Iterator[Path]:
    """A local path holding ``uri``'s content: the path itself for local files, a temp download for GCS."""
    if not is_gcs(uri):
        yield Path(uri.removeprefix("file://"))
        return
    st = storage or storage_for(uri)
    with tempfile.TemporaryDirectory(prefix="aitasks-") as d:
        local = Path(d) / PurePosixPath(uri).name
        st.get_file(uri, local)
        yield local


@contextlib.contextmanager
def local_tree(uri: str, storage: Storage | None = None) -> Iterator[Path]:
    """A local directory holding everything under ``uri``: the directory itself locally, a temp download for GCS.

    On GCS every object under ``<uri>/`` is downloaded to the same relative path (keys are checked:
    none can escape the temp directory); the directory is removed on exit.

    Raises:
        FileNotFoundError: A ``gs://`` prefix holds no object.
    """
    if not is_gcs(uri):
        yield Path(uri.removeprefix("file://"))
        return
    st = storage or storage_for(uri)
    prefix = uri.rstrip("/") + "/"
    objects = st.list(prefix)
    if not objects:
        raise FileNotFoundError(f"{prefix}: no object under this prefix")
    with tempfile.TemporaryDirectory(prefix="aitasks-") as d:
        for obj in objects:
            key = check_relative_key(obj[len(prefix) :])
            local = Path(d).joinpath(*key.split("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            st.get_file(obj, local)
        yield Path(d)


def put_tree(local: Path, uri: str, storage: Storage | None = None) -> list[str]:
    """Copy every file under the directory ``local`` to ``<uri>/<relative path>``; returns the URIs, sorted.

    Each file is published atomically, the tree as a whole is not: write a tree under a key of its own
    (a task's work directory), never over one that readers use.
    """
    st = storage or storage_for(uri)
    written = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        dest = join_uri(uri, path.relative_to(local).as_posix())
        st.put_file(path, dest)
        written.append(dest)
    return written


@contextlib.contextmanager
def publish_local_file(uri: str, storage: Storage | None = None, *, if_absent: bool = False) -> Iterator[Path]:
    """Yield a local temp path to write; on success it is published atomically to ``uri``.

    On an exception nothing is published and the temp file is removed.
    """
    st = storage or storage_for(uri)
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="aitasks-") as d:
            tmp = Path(d) / PurePosixPath(uri).name
            yield tmp
            st.put_file(tmp, uri, if_absent=if_absent)
        return
    with LocalStorage().publishing(uri, if_absent=if_absent) as tmp:
        yield tmp
