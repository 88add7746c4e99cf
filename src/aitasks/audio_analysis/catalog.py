"""The audio catalog: list its files, give each a track id, and refuse paths that escape its root.

A catalog is a directory tree (local) or a ``gs://`` prefix holding one file per track; its **key**
is the file's path under the root (``ab/t000123.ogg``), kept in every output next to the track id.

Track ids must match the platform's id pattern (``^[A-Za-z0-9_-]{1,64}$``) so the features join the
recommender's ``track`` entity. Each id is a function of its own key only, never of the rest of the
catalog, so it stays the same from run to run while files come and go:

- ``track_ids="stem"`` (default): the file stem when it is a valid id (``ab/t000123.ogg`` ->
  ``t000123``), otherwise the key's normalised id below;
- ``track_ids="key"``: always the key's normalised id, so ``a/intro.mp3`` and ``b/intro.mp3`` differ;
- a manifest's ``track_id`` column, when given, names the id of its row.

The normalised id of a key (:func:`key_track_id`) is a readable slug of the stem (accents dropped,
runs of other characters turned into ``_``, at most 47 characters, ``track`` when nothing is left),
``-``, and the first 16 hex digits of the SHA-256 of the key (UTF-8, Unicode NFC): ``Café del Mar
(1999).mp3`` -> ``Cafe_del_Mar_1999-<16 hex>``. Two files with the same id are both refused
(``duplicate_track_id``, naming the other files): which one is "the" track would otherwise depend on
listing order.

Listing never follows a symlink out of the root: a link whose target resolves outside it is
refused with reason ``unsafe_path`` (and so is a manifest key with ``..`` or an absolute path).
Links that stay inside the root are listed as the file they point to. In a walked folder, files
without an audio extension are counted and skipped (cover art, playlists); a non-audio file *with*
an audio extension is listed and quarantined by the decoder with its real content named.

A manifest lists the keys to analyse, in one of four formats told apart by its name
(:func:`manifest_format`): ``.csv`` / ``.tsv`` (a header row; a ``path`` column, or ``key``, and an
optional ``track_id`` column; other columns are ignored), ``.jsonl`` / ``.ndjson`` (one object per
line with ``path`` or ``key`` and an optional ``track_id``), anything else plain text (one path per
line, ``#`` comments and blank lines ignored). Every row gets an outcome with a reason
(:class:`ManifestRow`); a manifest that is not in its format is refused as a whole with
:class:`~aitasks.runtime.errors.DataFormatError`, never read as zero entries.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from aitasks.audio_analysis.decode import AUDIO_EXTENSIONS
from aitasks.runtime.errors import DataFormatError, UnsafePathError
from aitasks.runtime.storage import Storage, check_relative_key, is_gcs, join_uri

#: Track ids: the platform's identifier pattern (see the events contract).
TRACK_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Hex digits of the key's hash in a normalised id (64 bits: collisions are not expected below
#: billions of files, and one would be refused as ``duplicate_track_id``, never merged).
KEY_HASH_CHARS: Final = 16
#: The slug's share of a normalised id: the rest of the 64 characters is ``-`` and the hash.
SLUG_CHARS: Final = 64 - 1 - KEY_HASH_CHARS

TrackIds = Literal["stem", "key"]
ManifestFormat = Literal["lines", "csv", "tsv", "jsonl"]

#: Why the listing refuses a file or a manifest row (before any decoding).
LISTING_REASONS: Final[dict[str, str]] = {
    "unsafe_path": "the path escapes the catalog root",
    "not_found": "no file behind the key",
    "not_audio": "a manifest row whose path has no audio extension",
    "missing_key": "a manifest row with no path",
    "bad_name": "the file name is not valid UTF-8",
    "bad_track_id": "a manifest track_id that is not a valid track id",
    "duplicate_track_id": "several files would get the same track id",
    "duplicate_key": "a manifest path listed again with another track_id",
}


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
    key: str = ""


class ManifestRow(BaseModel):
    """What became of one manifest row: listed under a track id, refused, repeated or over the limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: int
    key: str
    status: Literal["listed", "refused", "repeated", "over_limit"]
    track_id: str = ""
    reason: str = ""
    detail: str = ""


class CatalogListing(BaseModel):
    """The result of listing a catalog: the files to analyse, the refused ones, what was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str
    entries: list[CatalogEntry]
    refused: list[Refusal]
    skipped_non_audio: int
    track_ids: TrackIds = "stem"
    #: One outcome per manifest row (empty when the catalog was walked).
    manifest_rows: list[ManifestRow] = []


# ------------------------------------------------------------------------------------ track ids


def _slug(stem: str) -> str:
    decomposed = unicodedata.normalize("NFKD", stem)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_only).strip("_-")[:SLUG_CHARS].strip("_-")
    return slug or "track"


def key_track_id(key: str) -> str:
    """The normalised track id of a key: ``<slug of the stem>-<16 hex of sha256(NFC key)>``."""
    digest = hashlib.sha256(unicodedata.normalize("NFC", key).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{_slug(PurePosixPath(key).stem)}-{digest[:KEY_HASH_CHARS]}"


def track_id_for(key: str, scheme: TrackIds = "stem") -> str:
    """The track id of ``key`` under ``scheme`` (see the module docstring); always a valid id."""
    stem = PurePosixPath(key).stem
    if scheme == "stem" and TRACK_ID_RE.match(stem):
        return stem
    return key_track_id(key)


# ------------------------------------------------------------------------------------ walking


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


def _printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
                    Refusal(
                        uri=_printable(str(full)),
                        key=_printable(full.relative_to(base).as_posix()),
                        reason="unsafe_path",
                        detail=f"directory link points outside {base}",
                    )
                )
        dirnames.sort()
        for name in sorted(filenames):
            full = here / name
            key = full.relative_to(base).as_posix()
            if not _is_audio(name):
                skipped += 1
                continue
            shown, shown_key = _printable(str(full)), _printable(key)
            if not _is_utf8(key):
                refused.append(
                    Refusal(uri=shown, key=shown_key, reason="bad_name", detail=f"{shown_key!r} is not valid UTF-8")
                )
                continue
            real = full.resolve()
            if not real.is_relative_to(base):
                refused.append(Refusal(uri=shown, key=key, reason="unsafe_path", detail=f"link points outside {base}"))
                continue
            try:
                size = real.stat().st_size
            except OSError:
                refused.append(Refusal(uri=shown, key=key, reason="not_found", detail="dangling link or vanished file"))
                continue
            found.append((key, str(real), size))
    return found, refused, skipped


def list_catalog(
    root: str, storage: Storage | None = None, *, limit: int = 0, track_ids: TrackIds = "stem"
) -> CatalogListing:
    """List the audio files under ``root`` (a local directory or a ``gs://`` prefix), sorted by key.

    Args:
        root: The catalog root.
        storage: The storage for ``gs://`` roots (ignored for local ones).
        limit: Keep only the first ``limit`` entries by key (0: all).
        track_ids: How keys become track ids (see the module docstring).

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
                refused.append(Refusal(uri=uri, key=key, reason="unsafe_path", detail=str(exc)))
                continue
            found.append((key, join_uri(root, key), -1))
    else:
        base = Path(root)
        if not base.is_dir():
            raise UnsafePathError(f"catalog root {root!r} is not a directory")
        found, refused, skipped = _walk_local(base)

    entries, id_refusals = _assign_ids(found, track_ids, {})
    return CatalogListing(
        root=root,
        entries=entries[:limit] if limit else entries,
        refused=refused + id_refusals,
        skipped_non_audio=skipped,
        track_ids=track_ids,
    )


def _assign_ids(
    found: list[tuple[str, str, int]], scheme: TrackIds, explicit: dict[str, str]
) -> tuple[list[CatalogEntry], list[Refusal]]:
    """Entries for ``found`` (in order) under ``scheme`` or the ``explicit`` ids; conflicts refused."""
    ids = {key: explicit.get(key) or track_id_for(key, scheme) for key, _, _ in found}
    sharing: dict[str, list[str]] = defaultdict(list)
    for key, _, _ in found:
        sharing[ids[key]].append(key)
    entries: list[CatalogEntry] = []
    refused: list[Refusal] = []
    for key, uri, size in found:
        tid = ids[key]
        if not TRACK_ID_RE.match(tid):
            refused.append(
                Refusal(
                    uri=uri,
                    key=key,
                    reason="bad_track_id",
                    detail=f"track_id {tid!r} does not match {TRACK_ID_RE.pattern}",
                )
            )
        elif len(others := sharing[tid]) > 1:
            named = ", ".join(repr(k) for k in others[:4]) + (", ..." if len(others) > 4 else "")
            if key in explicit:
                hint = "the manifest gives them the same track_id"
            else:
                hint = "give each a track_id in a manifest, or list with track_ids='key'"
            refused.append(
                Refusal(
                    uri=uri,
                    key=key,
                    reason="duplicate_track_id",
                    detail=f"{len(others)} files would get the track id {tid!r} ({named}): {hint}",
                )
            )
        else:
            entries.append(CatalogEntry(track_id=tid, key=key, uri=uri, size=size))
    return entries, refused


# ----------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ManifestItem:
    """One row of a manifest as written: its line, the path, the track id it names (None: derived)."""

    line: int
    key: str
    track_id: str | None


_FORMATS: Final[dict[str, ManifestFormat]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_UNSUPPORTED: Final = (".json", ".parquet", ".xlsx", ".xls", ".ods")
_FORMAT_HELP: Final = (
    "a manifest is plain text (one path per line), .csv/.tsv (a header with a 'path' column and an optional "
    "'track_id' column) or .jsonl (one object per line with 'path' and an optional 'track_id')"
)


def manifest_format(uri: str) -> ManifestFormat:
    """The format of a manifest, told from its name (``.csv``, ``.tsv``, ``.jsonl``; else plain lines).

    Raises:
        DataFormatError: a name that says the manifest is in a format no manifest may have (``.json``,
            ``.parquet``, spreadsheets).
    """
    suffix = PurePosixPath(uri.rstrip("/")).suffix.lower()
    if suffix in _UNSUPPORTED:
        raise DataFormatError(uri, f"manifests cannot be {suffix} files: {_FORMAT_HELP}")
    return _FORMATS.get(suffix, "lines")


def _manifest_text(data: bytes | str, name: str) -> str:
    if isinstance(data, str):
        return data
    if data[:4] == b"PAR1":
        raise DataFormatError(name, f"the manifest is a Parquet file: {_FORMAT_HELP}")
    if data[:4] == b"PK\x03\x04":
        raise DataFormatError(name, f"the manifest is a ZIP archive (a spreadsheet?): {_FORMAT_HELP}")
    if b"\x00" in data:
        raise DataFormatError(name, f"the manifest holds NUL bytes: it is binary, not text; {_FORMAT_HELP}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(name, f"the manifest is not UTF-8 text (byte {exc.start}): {_FORMAT_HELP}") from None


def _looks_like(first: str) -> str:
    if first.startswith(("{", "[")):
        return "; its first row looks like JSON: name the manifest .jsonl"
    if "," in first or "\t" in first or ";" in first:
        return "; its first row looks like a CSV/TSV header or record: name the manifest .csv or .tsv"
    return ""


def _lines(text: str, name: str) -> list[ManifestItem]:
    items = []
    for n, raw in enumerate(text.splitlines(), 1):
        key = raw.strip()
        if key and not key.startswith("#"):
            items.append(ManifestItem(n, key, None))
    if items and not any(_is_audio(i.key) for i in items):
        raise DataFormatError(
            name,
            f"no row of this plain-text manifest names an audio file (first row {items[0].key[:80]!r})"
            f"{_looks_like(items[0].key)}; {_FORMAT_HELP}",
        )
    return items


def _path_column(columns: list[str], name: str, where: str) -> str:
    have = [c for c in ("path", "key") if c in columns]
    if len(have) != 1:
        problem = "both a 'path' and a 'key' column" if have else f"no 'path' column (it has {columns})"
        raise DataFormatError(name, f"the manifest's {where} has {problem}; {_FORMAT_HELP}")
    return have[0]


def _table(text: str, delimiter: str, name: str) -> list[ManifestItem]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    items = []
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted cell may span lines)
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problem = f"line {line} is not {delimiter!r}-separated values ({exc}); {_FORMAT_HELP}"
            raise DataFormatError(name, problem) from None
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [c.strip().lower() for c in record]
            path_col = header.index(_path_column(header, name, "header"))
            id_col = header.index("track_id") if "track_id" in header else None
            continue
        cell = record[path_col].strip() if path_col < len(record) else ""
        tid = record[id_col].strip() if id_col is not None and id_col < len(record) else ""
        items.append(ManifestItem(line, cell, tid or None))
    return items


def _jsonl(text: str, name: str) -> list[ManifestItem]:
    items = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFormatError(name, f"line {n} is not JSON ({exc.msg}); {_FORMAT_HELP}") from None
        if not isinstance(row, dict):
            raise DataFormatError(name, f"line {n} is a JSON {type(row).__name__}, not an object; {_FORMAT_HELP}")
        col = _path_column(sorted(row), name, f"line {n}")
        key, tid = row[col], row.get("track_id")
        if not isinstance(key, str) or not (tid is None or isinstance(tid, str)):
            raise DataFormatError(name, f"line {n}: '{col}' and 'track_id' must be strings; {_FORMAT_HELP}")
        items.append(ManifestItem(n, key.strip(), (tid or "").strip() or None))
    return items


def parse_manifest(data: bytes | str, fmt: ManifestFormat = "lines", *, name: str = "manifest") -> list[ManifestItem]:
    """The rows of a manifest in format ``fmt`` (see :func:`manifest_format`).

    Raises:
        DataFormatError: the manifest is not in its format (binary, not UTF-8, no path column,
            a line that is not a JSON object, a plain-text manifest none of whose rows is an audio path).
    """
    text = _manifest_text(data, name)
    if fmt == "lines":
        return _lines(text, name)
    if fmt == "jsonl":
        return _jsonl(text, name)
    return _table(text, "," if fmt == "csv" else "\t", name)


def list_manifest(
    root: str,
    manifest: bytes | str,
    storage: Storage | None = None,
    *,
    fmt: ManifestFormat = "lines",
    name: str = "manifest",
    limit: int = 0,
    track_ids: TrackIds = "stem",
) -> CatalogListing:
    """The catalog entries named by a manifest, and the outcome of every row.

    A key that escapes the root (``..``, absolute, a symlink out of a local root) is refused as
    ``unsafe_path``; a row without a path as ``missing_key``; a path without an audio extension as
    ``not_audio``; a key with no file behind it as ``not_found``; an invalid ``track_id`` as
    ``bad_track_id``; keys that would share a track id as ``duplicate_track_id``. A path listed again
    is ``repeated`` (analysed once), or refused as ``duplicate_key`` when it names another track id.
    Entries keep the manifest's order of first appearance.

    Args:
        root: The catalog root (local directory or ``gs://`` prefix).
        manifest: The manifest's bytes (or text).
        storage: Storage of a ``gs://`` root.
        fmt: The manifest's format (:func:`manifest_format` of its name).
        name: The manifest's name, for error messages.
        limit: Keep only the first ``limit`` entries (0: all).
        track_ids: How keys without a ``track_id`` become track ids.

    Raises:
        DataFormatError: the manifest is not in its format.
    """
    items = parse_manifest(manifest, fmt, name=name)
    gcs = is_gcs(root)
    if gcs and storage is None:
        from aitasks.runtime.storage import storage_for

        storage = storage_for(root)
    found: list[tuple[str, str, int]] = []
    refused: list[Refusal] = []
    explicit: dict[str, str] = {}
    first_row: dict[str, ManifestItem] = {}
    early: dict[int, ManifestRow] = {}  # rows settled before track ids are assigned, by position

    def refuse(i: int, item: ManifestItem, uri: str, reason: str, detail: str) -> None:
        refused.append(Refusal(uri=uri, key=item.key, reason=reason, detail=f"line {item.line}: {detail}"))
        early[i] = ManifestRow(line=item.line, key=item.key, status="refused", reason=reason, detail=detail)

    for i, item in enumerate(items):
        key = item.key
        shown = key if gcs else str(Path(root) / key)
        if not key:
            refuse(i, item, root, "missing_key", "the row has no path")
            continue
        if key in first_row:
            before = first_row[key]
            if item.track_id is not None and item.track_id != before.track_id:
                refuse(i, item, shown, "duplicate_key", f"line {before.line} lists this path with another track_id")
            else:
                detail = f"the same path as line {before.line}: that row's outcome stands"
                early[i] = ManifestRow(line=item.line, key=key, status="repeated", reason="repeated_key", detail=detail)
            continue
        first_row[key] = item
        try:
            check_relative_key(key)
            if not _is_audio(key):
                exts = ", ".join(AUDIO_EXTENSIONS)
                refuse(i, item, shown, "not_audio", f"{key[:200]!r} has no audio extension ({exts})")
                continue
            if gcs:
                uri = join_uri(root, key)
                assert storage is not None
                if not storage.exists(uri):
                    refuse(i, item, uri, "not_found", "no object behind the key")
                    continue
                found.append((key, uri, -1))
            else:
                path = resolve_in_root(Path(root), key)
                if not path.is_file():
                    refuse(i, item, shown, "not_found", "no file behind the key")
                    continue
                found.append((key, str(path), path.stat().st_size))
        except UnsafePathError as exc:
            refuse(i, item, shown, "unsafe_path", str(exc))
            continue
        if item.track_id is not None:
            explicit[key] = item.track_id

    entries, id_refusals = _assign_ids(found, track_ids, explicit)
    for r in id_refusals:
        refused.append(r.model_copy(update={"detail": f"line {first_row[r.key].line}: {r.detail}"}))
    kept = entries[:limit] if limit else entries
    listed = {e.key: e.track_id for e in kept}
    over = {e.key: e.track_id for e in entries[len(kept) :]}
    by_key = {r.key: r for r in id_refusals}
    rows: list[ManifestRow] = []
    for i, item in enumerate(items):
        if i in early:
            rows.append(early[i])
        elif item.key in listed:
            rows.append(ManifestRow(line=item.line, key=item.key, status="listed", track_id=listed[item.key]))
        elif item.key in over:
            rows.append(
                ManifestRow(
                    line=item.line,
                    key=item.key,
                    status="over_limit",
                    track_id=over[item.key],
                    reason="limit",
                    detail=f"beyond the first {limit} entries",
                )
            )
        else:
            r = by_key[item.key]
            rows.append(ManifestRow(line=item.line, key=item.key, status="refused", reason=r.reason, detail=r.detail))
    return CatalogListing(
        root=root,
        entries=kept,
        refused=refused,
        skipped_non_audio=0,
        track_ids=track_ids,
        manifest_rows=rows,
    )


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
