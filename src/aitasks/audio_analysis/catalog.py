"""The audio catalog: list its files, map them to track ids, and refuse paths that escape its root.

A catalog is a directory tree (local) or a ``gs://`` prefix holding one file per track. The track id
is the file's stem (``ab/t000123.ogg`` -> ``t000123``) and must match the platform's id pattern, so
the features join the recommender's ``track`` entity. Two files with the same stem are both refused:
which one is "the" track would otherwise depend on listing order.

Listing never follows a symlink out of the root: a link whose target resolves outside it is
refused with reason ``unsafe_path`` (and so is a manifest key with ``..`` or an absolute path).
Links that stay inside the root are listed as the file they point to. Files without an audio
extension are counted and skipped (cover art, playlists); a non-audio file *with* an audio
extension is listed and quarantined by the decoder with its real content named.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Final

from pydantic import BaseModel, ConfigDict

from aitasks.audio_analysis.decode import AUDIO_EXTENSIONS
from aitasks.runtime.errors import UnsafePathError
from aitasks.runtime.storage import Storage, check_relative_key, is_gcs, join_uri

#: Track ids: the platform's identifier pattern (see the events contract).
TRACK_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CatalogEntry(BaseModel):
    """One audio file of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track_id: str
    key: str
    uri: str
    size: int


class Refusal(BaseModel):
    """A catalog entry refused before decoding: where, a reason code, and a sentence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    reason: str
    detail: str


class CatalogListing(BaseModel):
    """The result of listing a catalog: the files to analyse, the refused ones, what was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str
    entries: list[CatalogEntry]
    refused: list[Refusal]
    skipped_non_audio: int


def resolve_in_root(root: Path, key: str) -> Path:
    """The local path of ``key`` under ``root``, refusing ``..``, absolute keys and symlink escapes.

    Raises:
        UnsafePathError: the key or the file it resolves to lies outside ``root``.
    """
    check_relative_key(key)
    base = root.resolve()
    target = (base / key).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"{key!r} resolves outside the catalog root {str(base)!r}")
    return target


def _is_audio(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS


def _walk_local(root: Path) -> tuple[list[tuple[str, str, int]], list[Refusal], int]:
    base = root.resolve()
    found: list[tuple[str, str, int]] = []
    refused: list[Refusal] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            full = here / d
            if full.is_symlink() and not full.resolve().is_relative_to(base):
                refused.append(
                    Refusal(uri=str(full), reason="unsafe_path", detail=f"directory link points outside {base}")
                )
        dirnames.sort()
        for name in sorted(filenames):
            full = here / name
            key = full.relative_to(base).as_posix()
            if not _is_audio(name):
                skipped += 1
                continue
            real = full.resolve()
            if not real.is_relative_to(base):
                refused.append(Refusal(uri=str(full), reason="unsafe_path", detail=f"link points outside {base}"))
                continue
            try:
                size = real.stat().st_size
            except OSError:
                refused.append(Refusal(uri=str(full), reason="not_found", detail="dangling link or vanished file"))
                continue
            found.append((key, str(real), size))
    return found, refused, skipped


def list_catalog(root: str, storage: Storage | None = None, *, limit: int = 0) -> CatalogListing:
    """List the audio files under ``root`` (a local directory or a ``gs://`` prefix), sorted by key.

    Args:
        root: The catalog root.
        storage: The storage for ``gs://`` roots (ignored for local ones).
        limit: Keep only the first ``limit`` entries by key (0: all).

    Returns:
        Entries, refusals and the number of non-audio files skipped.

    Raises:
        UnsafePathError: a local root that is not a directory.
    """
    found: list[tuple[str, str, int]]
    refused: list[Refusal]
    if is_gcs(root):
        if storage is None:
            from aitasks.runtime.storage import storage_for

            storage = storage_for(root)
        prefix = root.rstrip("/") + "/"
        found, refused, skipped = [], [], 0
        for uri in sorted(storage.list(prefix)):
            key = uri[len(prefix) :]
            if not _is_audio(key):
                skipped += 1
                continue
            try:
                check_relative_key(key)
            except UnsafePathError as exc:
                refused.append(Refusal(uri=uri, reason="unsafe_path", detail=str(exc)))
                continue
            found.append((key, join_uri(root, key), -1))
    else:
        base = Path(root)
        if not base.is_dir():
            raise UnsafePathError(f"catalog root {root!r} is not a directory")
        found, refused, skipped = _walk_local(base)

    return _entries(root, found, refused, skipped, limit)


def _entries(
    root: str, found: list[tuple[str, str, int]], refused: list[Refusal], skipped: int, limit: int
) -> CatalogListing:
    stems = Counter(PurePosixPath(key).stem for key, _, _ in found)
    entries: list[CatalogEntry] = []
    for key, uri, size in found:
        stem = PurePosixPath(key).stem
        if not TRACK_ID_RE.match(stem):
            refused.append(Refusal(uri=uri, reason="bad_track_id", detail=f"file stem {stem!r} is not a track id"))
        elif stems[stem] > 1:
            refused.append(
                Refusal(uri=uri, reason="duplicate_track_id", detail=f"{stems[stem]} files share the stem {stem!r}")
            )
        else:
            entries.append(CatalogEntry(track_id=stem, key=key, uri=uri, size=size))
    if limit:
        entries = entries[:limit]
    return CatalogListing(root=root, entries=entries, refused=refused, skipped_non_audio=skipped)


def list_manifest(root: str, manifest: str, storage: Storage | None = None, *, limit: int = 0) -> CatalogListing:
    """The catalog entries named by a manifest: one key (path relative to ``root``) per line.

    Blank lines and ``#`` comments are ignored. A key that escapes the root (``..``, absolute, a
    symlink out of a local root) is refused as ``unsafe_path``; a key with no file behind it as
    ``not_found``; a key without an audio extension is skipped. Entries keep the manifest's order
    of first appearance (repeated keys count once).

    Args:
        root: The catalog root (local directory or ``gs://`` prefix).
        manifest: The manifest's text.
        storage: Storage of a ``gs://`` root.
        limit: Keep only the first ``limit`` entries (0: all).
    """
    found: list[tuple[str, str, int]] = []
    refused: list[Refusal] = []
    skipped = 0
    seen: set[str] = set()
    gcs = is_gcs(root)
    if gcs and storage is None:
        from aitasks.runtime.storage import storage_for

        storage = storage_for(root)
    for raw in manifest.splitlines():
        key = raw.strip()
        if not key or key.startswith("#") or key in seen:
            continue
        seen.add(key)
        shown = key if gcs else str(Path(root) / key)
        if not _is_audio(key):
            skipped += 1
            continue
        try:
            if gcs:
                check_relative_key(key)
                uri = join_uri(root, key)
                assert storage is not None
                if not storage.exists(uri):
                    refused.append(Refusal(uri=uri, reason="not_found", detail="no object behind the key"))
                    continue
                found.append((key, uri, -1))
            else:
                path = resolve_in_root(Path(root), key)
                if not path.is_file():
                    refused.append(Refusal(uri=shown, reason="not_found", detail="no file behind the key"))
                    continue
                found.append((key, str(path), path.stat().st_size))
        except UnsafePathError as exc:
            refused.append(Refusal(uri=shown, reason="unsafe_path", detail=str(exc)))
    return _entries(root, found, refused, skipped, limit)


def shard(entries: list[CatalogEntry], shards: int) -> list[list[CatalogEntry]]:
    """Split entries into at most ``shards`` contiguous, balanced, non-empty groups (stable by key)."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    n = min(shards, len(entries))
    if n == 0:
        return []
    size, extra = divmod(len(entries), n)
    out: list[list[CatalogEntry]] = []
    start = 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(entries[start:stop])
        start = stop
    return out
