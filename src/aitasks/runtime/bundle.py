"""Directory artifacts ("bundles"): a set of files addressed by one manifest file.

A trained model or an index is several files. Object stores have no directories and no atomic
multi-file write, so a bundle is published file by file (each atomically) with ``MANIFEST.json``
written last: the manifest lists every file with its sha256. The manifest's URI *is* the artifact:
its content hash covers every file transitively (so it keys idempotency), a bundle without a
manifest does not exist for readers, and readers verify each file against it before use.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aitasks.runtime.errors import DataFormatError
from aitasks.runtime.hashing import canonical_json, sha256_file
from aitasks.runtime.storage import Storage, check_relative_key, is_gcs, join_uri, storage_for

MANIFEST = "MANIFEST.json"
FORMAT = "aitasks.bundle/1"


def _files(src: Path) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix()
        if rel == MANIFEST:
            continue
        out.append((check_relative_key(rel), p))
    return out


def publish_bundle(storage: Storage, src: Path, dest: str, *, kind: str, meta: Mapping[str, Any] | None = None) -> str:
    """Publish every file under ``src`` to ``dest`` (a directory URI) and return the manifest URI.

    Args:
        storage: Storage serving ``dest``.
        src: Local directory with the files (subdirectories allowed).
        dest: Destination directory URI (local path or ``gs://``).
        kind: What the bundle holds (``model``, ``index``, ...), checked by readers.
        meta: JSON-able facts recorded in the manifest (versions, lineage).

    Returns:
        The URI of ``MANIFEST.json``.
    """
    files = _files(src)
    if not files:
        raise DataFormatError(str(src), "bundle directory holds no files")
    listing: dict[str, str] = {}
    for rel, path in files:
        listing[rel] = sha256_file(path)
        storage.put_file(path, join_uri(dest, rel))
    manifest = {"format": FORMAT, "kind": kind, "files": listing, "meta": dict(meta or {})}
    uri = join_uri(dest, MANIFEST)
    storage.write_bytes(uri, canonical_json(manifest).encode("utf-8"))
    return uri


def read_manifest(uri: str, storage: Storage | None = None, *, kind: str | None = None) -> dict[str, Any]:
    """The parsed manifest at ``uri``; a missing or malformed one raises :class:`DataFormatError`."""
    st = storage or storage_for(uri)
    try:
        raw = st.read_bytes(uri)
    except FileNotFoundError:
        raise DataFormatError(uri, "bundle manifest not found") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(uri, f"bundle manifest is not JSON: {exc}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise DataFormatError(uri, f"not a {FORMAT} manifest")
    if kind is not None and manifest.get("kind") != kind:
        raise DataFormatError(uri, f"bundle holds {manifest.get('kind')!r}, expected {kind!r}")
    for rel, digest in manifest["files"].items():
        if not isinstance(rel, str) or not isinstance(digest, str):
            raise DataFormatError(uri, "manifest file list must map names to sha256 strings")
        check_relative_key(rel)
    return manifest


def _verify(root: Path, manifest: Mapping[str, Any], uri: str) -> None:
    for rel, digest in manifest["files"].items():
        p = root / rel
        if not p.is_file():
            raise DataFormatError(uri, f"bundle file {rel} is missing")
        if sha256_file(p) != digest:
            raise DataFormatError(uri, f"bundle file {rel} does not match its sha256 in the manifest")


@contextlib.contextmanager
def open_bundle(
    uri: str, storage: Storage | None = None, *, kind: str | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A local directory holding the verified files of the bundle whose manifest is ``uri``.

    Local bundles are verified in place; ``gs://`` bundles are downloaded to a temp directory first.

    Raises:
        DataFormatError: Missing manifest or file, or a file whose sha256 differs from the manifest.
    """
    st = storage or storage_for(uri)
    manifest = read_manifest(uri, st, kind=kind)
    if not is_gcs(uri):
        root = Path(uri.removeprefix("file://")).parent
        _verify(root, manifest, uri)
        yield root, manifest
        return
    base = uri.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="aitasks-bundle-") as d:
        root = Path(d)
        for rel in manifest["files"]:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            st.get_file(join_uri(base, rel), target)
        _verify(root, manifest, uri)
        yield root, manifest


def export_bundle(uri: str, dest: Path, storage: Storage | None = None, *, kind: str | None = None) -> None:
    """Copy a verified bundle, manifest included, into the local directory ``dest`` (a KFP artifact path)."""
    with open_bundle(uri, storage, kind=kind) as (root, manifest):
        dest.mkdir(parents=True, exist_ok=True)
        for rel in manifest["files"]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)
        (dest / MANIFEST).write_text(canonical_json(manifest), "utf-8")
