"""Atomic local file publishing: the one implementation of temp file + fsync + rename.

A writer gets a hidden temporary path **beside** the target (same directory, so same filesystem and
``rename(2)`` is atomic), writes it, and only on success is the file fsynced, renamed over the
target (``os.replace``) and the directory fsynced. A reader sees the old file or the new one, never
a torn one, even when the writer is killed mid-write; on an exception the temp file is removed and
the target is untouched. With ``exclusive=True`` the temp file is hard-linked into place instead
(``os.link`` fails when the target exists), so of two racing writers exactly one wins and the
other gets :class:`FileExistsError`.

Temp names start with ``.tmp-`` so listings that skip hidden files never show them.

:class:`aitasks.runtime.storage.LocalStorage` publishes through this module; GCS has its own
atomicity (an upload becomes visible when complete, generation preconditions for races).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_PREFIX", "atomic_path", "atomic_write", "fsync_path", "publish", "temp_path"]

#: Prefix of every temp file this module creates (hidden: starts with a dot).
TMP_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path (a directory fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(target: str | os.PathLike[str]) -> Path:
    """A fresh hidden temp path beside ``target`` (not created; the parent directory is).

    For writers whose commit comes later than the write (several outputs published together):
    write it, then :func:`publish` it, and unlink it on failure. Otherwise use :func:`atomic_path`.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"


def publish(
    tmp: Path, target: str | os.PathLike[str], *, exclusive: bool = False, fsync: bool = True, sync_dir: bool = True
) -> None:
    """Publish the written temp file ``tmp`` (from :func:`temp_path`) over ``target`` atomically.

    Args:
        tmp: The temp file, beside ``target``.
        target: The file to publish.
        exclusive: Create-only: hard-link instead of rename, :class:`FileExistsError` when ``target``
            exists (the caller still removes ``tmp``).
        fsync: fsync ``tmp`` first (``False`` when the writer already did).
        sync_dir: fsync the directory after the rename.
    """
    path = Path(target)
    if fsync:
        fsync_path(tmp)
    if exclusive:
        os.link(tmp, path)  # atomic and exclusive: FileExistsError when the target exists
    else:
        os.replace(tmp, path)
    if sync_dir:
        fsync_path(path.parent)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str],
    *,
    exclusive: bool = False,
    fsync: bool = True,
    sync_dir: bool = True,
) -> Iterator[Path]:
    """Yield a temp path beside ``target`` to write; on success publish it atomically over ``target``.

    The temp path does not exist yet: the writer creates it (``open(tmp, "wb")``,
    ``pq.write_table(t, tmp)``, ``sf.write(tmp, ...)``, ...). The parent directory is created.

    Args:
        target: The file to publish.
        exclusive: Create-only: raise :class:`FileExistsError` when ``target`` exists (racing
            writers agree on one winner).
        fsync: fsync the temp file before the rename. ``False`` only when the writer already did,
            or for caches whose loss in a power cut costs a recompute, never a wrong answer.
        sync_dir: fsync the directory after the rename (durability of the rename itself).

    Yields:
        The temp path.

    Raises:
        FileExistsError: ``exclusive`` and ``target`` exists (nothing is published).
        FileNotFoundError: The writer did not create the temp file.
    """
    tmp = temp_path(target)
    try:
        yield tmp
        publish(tmp, target, exclusive=exclusive, fsync=fsync, sync_dir=sync_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # after a replace it is gone; after a link it is the second name


def atomic_write(
    target: str | os.PathLike[str],
    data: bytes | str,
    *,
    exclusive: bool = False,
    sync_dir: bool = True,
    encoding: str = "utf-8",
) -> None:
    """Write ``data`` to ``target`` atomically and durably (see :func:`atomic_path`).

    Args:
        target: The file to write.
        data: The content; ``str`` is encoded with ``encoding``.
        exclusive: Create-only (:class:`FileExistsError` when ``target`` exists).
        sync_dir: fsync the directory after the rename.
        encoding: Encoding of ``str`` data.
    """
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(target, exclusive=exclusive, fsync=False, sync_dir=sync_dir) as tmp, tmp.open("xb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())


def root_cache_dir(kind: str, root: str) -> Path:
    """This machine's cache folder of ``kind`` for storage root ``root``: one folder per root, under the
    temp directory (a ``gs://`` root has no local folder; ``Path("gs://b")`` would be ``gs:/b``)."""
    import tempfile

    from aitasks.runtime.hashing import sha256_text

    return Path(tempfile.gettempdir()) / f"aitasks-{kind}" / sha256_text(root)[:16]
