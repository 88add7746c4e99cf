"""Versioned index publishing with an atomically switched ``CURRENT`` pointer, and rollback.

Layout under a root (local directory or ``gs://bucket/prefix``)::

    <root>/indexes/<name>/v<N>/index.bin, ids.json, seen.parquet, ..., manifest.json
    <root>/indexes/<name>/CURRENT      {"version": N, "history": [...], "updated_at": ...}

Why a reader never sees a half-written version:

- Local: the version is assembled in a temp directory beside the target (same filesystem), every
  file and the directory fsynced, then renamed to ``v<N>`` in one ``rename(2)``; ``rename`` of a
  directory onto an existing non-empty one fails, so two publishers can never share an N (the loser
  takes N+1). A killed publisher leaves only a ``.v<N>.tmp-*`` directory, which readers ignore.
- GCS: files are uploaded create-only (``if_generation_match=0``) with ``manifest.json`` last; a
  version without a manifest does not exist for readers, and a manifest can only be created once.
- Everywhere: readers go through ``CURRENT``, which is switched by compare-and-swap only after the
  version is complete, and they verify every file's sha256 against the manifest before use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from aitasks.recommendation_update.index import AnnIndex
from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError, PreconditionFailedError
from aitasks.runtime.hashing import sha256_file, sha256_json
from aitasks.runtime.storage import Storage, Version, is_gcs, join_uri, storage_for

_TASK: Final = "index.publish"
MANIFEST: Final = "manifest.json"
CURRENT: Final = "CURRENT"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")
_MAX_RACES: Final = 50


class IndexManifest(BaseModel):
    """What a published version holds, where it came from, and the checksum of every file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int = Field(ge=1)
    backend: str
    dim: int = Field(ge=1)
    count: int = Field(ge=1)
    space: str = "ip"
    ef_search: int = Field(ge=1)
    m: int
    ef_construction: int
    recall_at_k: float
    k: int
    files: dict[str, str]
    content_hash: str
    model_name: str
    model_version: int
    created_at: str
    extra: dict[str, str] = Field(default_factory=dict)


class PublishResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    uri: str
    manifest: IndexManifest
    created: bool


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInputError(_TASK, [FieldIssue("name", "must match ^[a-z][a-z0-9_-]{0,62}$")])
    return name


def _base(root: str, name: str) -> str:
    return join_uri(root, "indexes", _check_name(name))


def _st(root: str, storage: Storage | None) -> Storage:
    return storage or storage_for(root)


def _versions(root: str, name: str, st: Storage) -> list[int]:
    """Numbers of the versions that exist for readers (a manifest is present)."""
    base = _base(root, name)
    found: set[int] = set()
    if is_gcs(root):
        for uri in st.list(base + "/"):
            parts = uri[len(base) + 1 :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and (m := _VERSION_DIR.match(parts[0])):
                found.add(int(m.group(1)))
    else:
        p = Path(base)
        if p.is_dir():
            for child in p.iterdir():
                if (m := _VERSION_DIR.match(child.name)) and (child / MANIFEST).is_file():
                    found.add(int(m.group(1)))
    return sorted(found)


def _read_manifest(root: str, name: str, version: int, st: Storage) -> IndexManifest:
    uri = join_uri(_base(root, name), f"v{version}", MANIFEST)
    try:
        return IndexManifest.model_validate_json(st.read_bytes(uri))
    except FileNotFoundError:
        raise DataFormatError(uri, f"index {name} has no version {version}") from None
    except ValueError as exc:
        raise DataFormatError(uri, f"malformed manifest: {exc}") from None


def _read_pointer(root: str, name: str, st: Storage) -> tuple[dict[str, Any] | None, Version]:
    """CURRENT's content (None when absent) and the version token a compare-and-swap needs."""
    uri = join_uri(_base(root, name), CURRENT)
    version = st.version(uri)
    try:
        raw = st.read_bytes(uri)
    except FileNotFoundError:
        return None, Version(None)
    try:
        data = json.loads(raw)
        int(data["version"])
    except (ValueError, KeyError, TypeError):
        raise DataFormatError(uri, "malformed CURRENT pointer") from None
    return data, version


def _switch(root: str, name: str, version: int, st: Storage, *, history_of: int | None = None) -> None:
    """Point CURRENT at ``version`` by compare-and-swap (create-only when absent), retrying lost races."""
    uri = join_uri(_base(root, name), CURRENT)
    for _ in range(_MAX_RACES):
        data, token = _read_pointer(root, name, st)
        history = [int(v) for v in (data or {}).get("history", [])]
        if data is not None:
            current = int(data["version"])
            if current == version:
                return
            history = [*history, current][-100:] if history_of is None else history[:history_of]
        payload = json.dumps(
            {"version": version, "history": history, "updated_at": datetime.now(UTC).isoformat()}, sort_keys=True
        ).encode("utf-8")
        try:
            st.compare_and_swap(uri, payload, token)  # create-only when the token says "absent"
            return
        except (PreconditionFailedError, FileExistsError):
            continue
    raise PreconditionFailedError(f"could not switch {uri}: {_MAX_RACES} lost races in a row")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_local_version(base: Path, source: Path, manifest_for: dict[str, object], files: dict[str, str]) -> int:
    """Assemble in a temp dir beside the target, fsync, then rename to the first free ``v<N>``."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".v-tmp-", dir=base))
    try:
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
            _fsync(target)
        for _ in range(_MAX_RACES):
            existing = [int(m.group(1)) for c in base.iterdir() if (m := _VERSION_DIR.match(c.name))]
            n = max(existing, default=0) + 1
            manifest = IndexManifest.model_validate({**manifest_for, "version": n})
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), "utf-8")
            _fsync(tmp / MANIFEST)
            _fsync(tmp)
            try:
                tmp.rename(base / f"v{n}")  # fails when v<N> exists: a racing publisher took N
            except OSError:
                continue
            _fsync(base)
            return n
        raise PreconditionFailedError(f"could not claim a version under {base}: {_MAX_RACES} lost races")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_gcs_version(
    st: Storage, base: str, source: Path, manifest_for: dict[str, object], files: dict[str, str], start: int
) -> int:
    for n in range(start, start + _MAX_RACES):
        prefix = join_uri(base, f"v{n}")
        if st.exists(join_uri(prefix, MANIFEST)):
            continue
        try:
            for rel in files:
                st.put_file(source / rel, join_uri(prefix, rel), if_absent=True)
            manifest = IndexManifest.model_validate({**manifest_for, "version": n})
            st.write_bytes(join_uri(prefix, MANIFEST), manifest.model_dump_json(indent=2).encode(), if_absent=True)
        except (PreconditionFailedError, FileExistsError):
            continue  # another publisher is writing v<N>: take the next number
        return n
    raise PreconditionFailedError(f"could not claim a version under {base}: {_MAX_RACES} lost races")


def publish_index(
    root: str,
    name: str,
    source_dir: Path,
    *,
    backend: str,
    dim: int,
    m: int,
    ef_construction: int,
    ef_search: int,
    recall_at_k: float,
    k: int,
    model_name: str,
    model_version: int,
    extra: dict[str, str] | None = None,
    storage: Storage | None = None,
) -> PublishResult:
    """Publish every file of ``source_dir`` as the next version of ``name`` and switch CURRENT to it.

    When a version with the same content (files and build parameters) exists, no version is
    created: CURRENT is pointed at it and ``created`` is False.

    Raises:
        InvalidInputError: A bad name or an empty source directory.
        PreconditionFailedError: Lost too many races in a row (retryable).
    """
    st = _st(root, storage)
    base = _base(root, name)
    files = {
        p.relative_to(source_dir).as_posix(): sha256_file(p)
        for p in sorted(source_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    if not files:
        raise InvalidInputError(_TASK, [FieldIssue("source_dir", f"{source_dir} holds no files")])
    count = len(json.loads((source_dir / "ids.json").read_text("utf-8"))["ids"]) if "ids.json" in files else 0
    params = {"backend": backend, "dim": dim, "m": m, "ef_construction": ef_construction, "ef_search": ef_search}
    content_hash = sha256_json({"files": files, "params": params, "model": [model_name, model_version]})
    for v in _versions(root, name, st):
        existing = _read_manifest(root, name, v, st)
        if existing.content_hash == content_hash:
            _switch(root, name, v, st)
            return PublishResult(version=v, uri=join_uri(base, f"v{v}"), manifest=existing, created=False)
    manifest_for: dict[str, object] = {
        "name": name,
        **params,
        "count": max(count, 1),
        "recall_at_k": recall_at_k,
        "k": k,
        "files": files,
        "content_hash": content_hash,
        "model_name": model_name,
        "model_version": model_version,
        "created_at": datetime.now(UTC).isoformat(),
        "extra": dict(extra or {}),
    }
    if is_gcs(root):
        n = _write_gcs_version(st, base, source_dir, manifest_for, files, max(_versions(root, name, st), default=0) + 1)
    else:
        n = _write_local_version(Path(base), source_dir, manifest_for, files)
    _switch(root, name, n, st)
    return PublishResult(
        version=n, uri=join_uri(base, f"v{n}"), manifest=_read_manifest(root, name, n, st), created=True
    )


def read_current(root: str, name: str, *, storage: Storage | None = None) -> IndexManifest:
    """The manifest of the version CURRENT points at."""
    st = _st(root, storage)
    data, _ = _read_pointer(root, name, st)
    if data is None:
        raise DataFormatError(_base(root, name), f"no published index {name} under {root}")
    return _read_manifest(root, name, int(data["version"]), st)


def list_versions(root: str, name: str, *, storage: Storage | None = None) -> list[IndexManifest]:
    st = _st(root, storage)
    return [_read_manifest(root, name, v, st) for v in _versions(root, name, st)]


def _verified_dir(root: str, name: str, manifest: IndexManifest, st: Storage, cache_dir: Path | None) -> Path:
    """A local directory with the version's files, each checked against the manifest."""
    prefix = join_uri(_base(root, name), f"v{manifest.version}")
    if is_gcs(root):
        local = (cache_dir or Path(tempfile.mkdtemp(prefix="aitasks-index-"))) / name / f"v{manifest.version}"
        local.mkdir(parents=True, exist_ok=True)
        for rel, digest in manifest.files.items():
            target = local / rel
            if not (target.is_file() and sha256_file(target) == digest):
                target.parent.mkdir(parents=True, exist_ok=True)
                st.get_file(join_uri(prefix, rel), target)
    else:
        local = Path(prefix)
    for rel, digest in manifest.files.items():
        p = local / rel
        if not p.is_file():
            raise DataFormatError(str(p), f"file of {name} v{manifest.version} is missing")
        if sha256_file(p) != digest:
            raise DataFormatError(str(p), f"file of {name} v{manifest.version} does not match its sha256")
    return local


def load_version(
    root: str, name: str, version: int, *, storage: Storage | None = None, cache_dir: Path | None = None
) -> tuple[AnnIndex, IndexManifest, Path]:
    """A verified version: the loaded index, its manifest and the local directory of its files."""
    st = _st(root, storage)
    manifest = _read_manifest(root, name, version, st)
    local = _verified_dir(root, name, manifest, st, cache_dir)
    return AnnIndex.load(local, ef=manifest.ef_search), manifest, local


def load_current(
    root: str, name: str, *, storage: Storage | None = None, cache_dir: Path | None = None
) -> tuple[AnnIndex, IndexManifest, Path]:
    """The version CURRENT points at, verified and loaded (see :func:`load_version`)."""
    manifest = read_current(root, name, storage=storage)
    return load_version(root, name, manifest.version, storage=storage, cache_dir=cache_dir)


def rollback(root: str, name: str, *, to: int | None = None, storage: Storage | None = None) -> int:
    """Point CURRENT at ``to`` (default: the previous version in its history); returns the version.

    The target is verified (manifest and checksums) before the switch.
    """
    st = _st(root, storage)
    data, _ = _read_pointer(root, name, st)
    if data is None:
        raise DataFormatError(_base(root, name), f"no published index {name} under {root}")
    history = [int(v) for v in data.get("history", [])]
    keep: int | None
    if to is None:
        if not history:
            raise InvalidInputError(_TASK, [FieldIssue("to", f"{name} has no earlier version to roll back to")])
        target, keep = history[-1], len(history) - 1  # undo the last switch: pop it from the history
    else:
        target, keep = to, None  # an explicit jump is itself undoable: the current version joins the history
    manifest = _read_manifest(root, name, target, st)
    _verified_dir(root, name, manifest, st, None)
    _switch(root, name, target, st, history_of=keep)
    return target
