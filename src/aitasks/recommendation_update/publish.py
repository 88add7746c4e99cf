"""Versioned index publishing with an atomically switched ``CURRENT`` pointer, and rollback.

Layout under a root (local directory or ``gs://bucket/prefix``)::

    <root>/indexes/<name>/v<N>/index.bin, ids.json, seen.parquet, ..., manifest.json
    <root>/indexes/<name>/CURRENT   {"version": N, "history": [...], "rolled_back": [...], "updated_at": ...}

Why a reader never sees a half-written version, even when the publisher is SIGKILLed at any point:

- Local: the version is assembled in a hidden ``.v-tmp-*`` directory beside the target (same
  filesystem), every file, the manifest and the directory are fsynced, then the directory is renamed
  to ``v<N>`` in one ``rename(2)`` and the parent fsynced. Before the rename there is no ``v<N>``;
  after it, a complete one. ``rename`` of a directory onto an existing non-empty one fails, so two
  publishers can never share an N: the loser takes N+1. A killed publisher leaves only the hidden
  temp directory, which readers and version listings ignore.
- GCS: an object appears whole when its upload completes, or not at all. A publisher first claims
  ``v<N>/CLAIM`` create-only (``if_generation_match=0``): one winner per N, and the client library's
  retries stay safe. It then uploads the files create-only and ``manifest.json`` last. A version
  without a manifest does not exist for readers; a killed publisher leaves a claimed, manifest-less
  prefix that nobody reuses (the next publisher skips every claimed N).
- Everywhere: readers go through ``CURRENT``, which is switched by compare-and-swap (local: content
  hash under an flock, atomic rename; GCS: generation precondition) only after the version is
  complete, and they verify every file's sha256 against the manifest before use. A kill between the
  version write and the switch leaves a complete version that is not current; re-running the same
  publish finds it by content hash and switches to it instead of writing another.

``CURRENT`` also remembers the versions a rollback moved away from (``rolled_back``): re-publishing
such a version's content does not silently undo the operator's rollback (``rollback(to=N)`` does).

Cleanup (:func:`sweep`, run by every publish, and :func:`prune`, ``aitasks index prune --keep N``):

- A killed local publisher leaves its ``.v-tmp-*`` directory (the size of the index); a killed GCS
  publisher leaves a claimed, manifest-less ``v<N>/`` prefix. The sweep removes them once nothing in
  them changed for ``older_than_s`` (default one hour, ``AITASKS_INDEX_SWEEP_AFTER_S``): a live
  publisher keeps writing, so its files stay young. A swept GCS claim is deleted, or, when it holds the
  highest number in use, replaced by a tombstone so that the number is never claimed again; a
  publisher re-checks its claim before writing its manifest, so one that stalled past the age fails
  (and its retry takes the next number) instead of completing a version whose files were swept.
- Pruning keeps the ``keep`` newest versions, the version ``CURRENT`` points at and the one a plain
  rollback would return to. A version is first made invisible (renamed to a hidden ``.v-del-*``
  directory; on GCS its manifest is deleted first), ``CURRENT`` is read again (a publisher may have
  switched to it meanwhile: it is then put back) and only then are its files deleted. Its number is
  never reused: new versions take the highest number in use plus one, and the newest is never pruned.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aitasks.platform.files import atomic_path, fsync_path
from aitasks.recommendation_update.index import IDS_FILE, INDEX_FILE, AnnIndex, Backend, read_id_map
from aitasks.runtime.errors import (
    DataFormatError,
    FieldIssue,
    InvalidInputError,
    PreconditionFailedError,
    UnsafePathError,
)
from aitasks.runtime.hashing import sha256_file, sha256_json
from aitasks.runtime.storage import Storage, Version, check_relative_key, is_gcs, join_uri, storage_for

_TASK: Final = "index.publish"
MANIFEST: Final = "manifest.json"
CURRENT: Final = "CURRENT"
CLAIM: Final = "CLAIM"
NAME_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")
_TMP_PREFIX: Final = ".v-tmp-"
_TRASH_PREFIX: Final = ".v-del-"
#: Default age after which a killed publisher's leftovers are swept (seconds).
SWEEP_AFTER_S: Final = 3600.0
_MAX_RACES: Final = 50
_KEEP_HISTORY: Final = 100
_CHUNK: Final = 1 << 20


class IndexManifest(BaseModel):
    """What a published version holds, how it was built, where it came from, and every file's sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    backend: Backend
    dim: int = Field(ge=1)
    count: int = Field(ge=1)
    space: Literal["ip"] = "ip"
    ef_search: int = Field(ge=1)
    m: int = Field(ge=2)
    ef_construction: int = Field(ge=1)
    recall_at_k: float = Field(ge=0, le=1)
    k: int = Field(ge=1)
    files: dict[str, str]
    content_hash: str
    model_name: str
    model_version: int = Field(ge=0)
    created_at: str
    extra: dict[str, str] = Field(default_factory=dict)


class PublishResult(BaseModel):
    """Outcome of :func:`publish_index`.

    Attributes:
        version: The version holding the content (new, or the existing one with the same content).
        uri: Its directory URI.
        manifest: Its manifest.
        created: False when a version with the same content already existed.
        current: Whether CURRENT points at it now (False only when a rollback had moved away from it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    uri: str
    manifest: IndexManifest
    created: bool
    current: bool
    #: What the sweep before this publish removed (killed publishers' temp dirs, abandoned GCS claims).
    swept: list[str] = Field(default_factory=list)


class CurrentPointer(BaseModel):
    """The content of ``CURRENT``."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(ge=1)
    history: list[int] = Field(default_factory=list)  # earlier current versions, most recent last
    rolled_back: list[int] = Field(default_factory=list)  # versions a rollback moved away from
    updated_at: str = ""


class NoPublishedIndexError(DataFormatError):
    """No ``CURRENT`` pointer exists for the index (nothing was ever published)."""

    def __init__(self, root: str, name: str) -> None:
        super().__init__(join_uri(root, "indexes", name, CURRENT), f"no published index {name} under {root}")


# ---------------------------------------------------------------------------------------- helpers
def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(_TASK, [FieldIssue("name", f"{name!r} must match {NAME_PATTERN}")])
    return name


def _base(root: str, name: str) -> str:
    return join_uri(root, "indexes", _check_name(name))


def _st(root: str, storage: Storage | None) -> Storage:
    return storage or storage_for(root)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst``, fsync it, and return the sha256 of the bytes written."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _version_numbers(root: str, name: str, st: Storage, *, complete: bool = True) -> list[int]:
    """Version numbers under the index: with ``complete``, those readers see (a manifest is present);
    without, every number in use (GCS: also claimed prefixes a killed publisher left behind)."""
    base = _base(root, name)
    found: set[int] = set()
    if is_gcs(root):
        for uri in st.list(base + "/"):
            parts = uri[len(base) + 1 :].split("/")
            if len(parts) >= 2 and (m := _VERSION_DIR.match(parts[0])) and (parts[1] == MANIFEST or not complete):
                found.add(int(m.group(1)))
    else:
        found.update(_local_numbers(Path(base), complete=complete))
    return sorted(found)


def _local_numbers(base: Path, *, complete: bool) -> list[int]:
    if not base.is_dir():
        return []
    return [
        int(m.group(1))
        for child in base.iterdir()
        if (m := _VERSION_DIR.match(child.name)) and (not complete or (child / MANIFEST).is_file())
    ]


def _read_manifest(root: str, name: str, version: int, st: Storage) -> IndexManifest:
    uri = join_uri(_base(root, name), f"v{int(version)}", MANIFEST)
    try:
        manifest = IndexManifest.model_validate_json(st.read_bytes(uri))
    except FileNotFoundError:
        raise DataFormatError(uri, f"index {name} has no version {version}") from None
    except ValueError as exc:
        raise DataFormatError(uri, f"malformed manifest: {exc}") from None
    if manifest.name != name or manifest.version != version:
        raise DataFormatError(uri, f"manifest names {manifest.name} v{manifest.version}, not {name} v{version}")
    try:
        for rel in manifest.files:
            check_relative_key(rel)
    except UnsafePathError as exc:
        raise DataFormatError(uri, f"manifest lists an unsafe file name: {exc}") from None
    missing = {INDEX_FILE, IDS_FILE} - set(manifest.files)
    if missing:
        raise DataFormatError(uri, f"manifest lacks {sorted(missing)}")
    return manifest


def _read_pointer(root: str, name: str, st: Storage) -> tuple[CurrentPointer | None, Version]:
    """CURRENT's content (None when absent) and the version token a compare-and-swap needs."""
    uri = join_uri(_base(root, name), CURRENT)
    token = st.version(uri)  # read before the content: a change in between makes the CAS fail, not lie
    try:
        raw = st.read_bytes(uri)
    except FileNotFoundError:
        return None, Version(None)
    try:
        return CurrentPointer.model_validate_json(raw), token
    except ValueError:
        raise DataFormatError(uri, "malformed CURRENT pointer") from None


def _update_pointer(
    root: str, name: str, st: Storage, decide: Callable[[CurrentPointer | None], CurrentPointer | None]
) -> CurrentPointer | None:
    """Apply ``decide`` to CURRENT by compare-and-swap (create-only when absent), re-deciding on a lost race.

    ``decide`` returns the new pointer, or None to leave CURRENT as it is. Returns CURRENT afterwards.
    """
    uri = join_uri(_base(root, name), CURRENT)
    for _ in range(_MAX_RACES):
        pointer, token = _read_pointer(root, name, st)
        new = decide(pointer)
        if new is None:
            return pointer
        try:
            st.compare_and_swap(uri, new.model_dump_json().encode("utf-8"), token)
        except (PreconditionFailedError, FileExistsError):
            continue
        return new
    raise PreconditionFailedError(f"could not switch {uri}: {_MAX_RACES} lost races in a row")


def _moved(pointer: CurrentPointer | None, version: int, *, history: list[int] | None = None) -> CurrentPointer:
    """``pointer`` moved to ``version``; by default the version it leaves joins the history."""
    if history is None:
        history = [] if pointer is None else [*pointer.history, pointer.version]
    rolled_back = [] if pointer is None else list(pointer.rolled_back)
    return CurrentPointer(version=version, history=history[-_KEEP_HISTORY:], rolled_back=rolled_back, updated_at=_now())


def _source_files(source_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files to publish (hidden files and manifests left out)."""
    if not source_dir.is_dir():
        raise InvalidInputError(_TASK, [FieldIssue("source_dir", f"{source_dir} is not a directory")])
    files: dict[str, str] = {}
    for p in sorted(source_dir.rglob("*")):
        rel = p.relative_to(source_dir).as_posix()
        # A bundle's MANIFEST.json would differ between local and GCS sources and collide with
        # manifest.json on case-insensitive filesystems; hidden files are editor or OS debris.
        if p.is_symlink():  # its content could come from anywhere: publish real files only
            raise InvalidInputError(_TASK, [FieldIssue("source_dir", f"{rel} is a symbolic link")])
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")) or rel.lower() == MANIFEST:
            continue
        try:
            files[check_relative_key(rel)] = sha256_file(p)
        except UnsafePathError as exc:
            raise InvalidInputError(_TASK, [FieldIssue("source_dir", str(exc))]) from None
    missing = {INDEX_FILE, IDS_FILE} - set(files)
    if missing:
        raise InvalidInputError(_TASK, [FieldIssue("source_dir", f"{source_dir} lacks {sorted(missing)}")])
    if CLAIM in files:
        raise InvalidInputError(_TASK, [FieldIssue("source_dir", f"{CLAIM} is reserved for the publisher")])
    return files


def _stage(source_dir: Path, staging: Path, files: dict[str, str]) -> None:
    """Copy the files into ``staging`` (fsynced), checking each copy against the hash taken before."""
    dirs = {staging}
    for rel, digest in files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        dirs.add(target.parent)
        if _copy_hashing(source_dir / rel, target) != digest:
            raise DataFormatError(str(source_dir / rel), "changed while it was being published")
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_path(d)


def _write_local_version(
    base: Path, source_dir: Path, files: dict[str, str], manifest_for: Callable[[int], IndexManifest]
) -> int:
    """Assemble the version in a hidden temp dir beside the target, then rename it to the first free ``v<N>``."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()  # honours the umask, unlike mkdtemp's 0700: serving processes must read the version
    try:
        return _rename_into_place(base, tmp, source_dir, files, manifest_for)
    except FileNotFoundError as exc:
        if tmp.exists():
            raise
        # Stalled past the sweep age: a sweep took the temp dir. Retryable: the retry starts afresh.
        raise PreconditionFailedError(f"{tmp} was swept while this publisher stalled") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename


def _rename_into_place(
    base: Path, tmp: Path, source_dir: Path, files: dict[str, str], manifest_for: Callable[[int], IndexManifest]
) -> int:
    """Stage the files in ``tmp``, write the manifest of the next free number and rename ``tmp`` to it."""
    _stage(source_dir, tmp, files)
    for _ in range(_MAX_RACES):
        n = max(_local_numbers(base, complete=False), default=0) + 1
        manifest = tmp / MANIFEST
        manifest.unlink(missing_ok=True)
        with manifest.open("x", encoding="utf-8") as fh:
            fh.write(manifest_for(n).model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_path(tmp)
        try:
            tmp.rename(base / f"v{n}")  # fails when v<N> exists: a racing publisher took N
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        fsync_path(base)
        return n
    raise PreconditionFailedError(f"could not claim a version under {base}: {_MAX_RACES} lost races")


def _write_gcs_version(
    st: Storage,
    root: str,
    name: str,
    source_dir: Path,
    files: dict[str, str],
    manifest_for: Callable[[int], IndexManifest],
) -> int:
    """Claim ``v<N>/CLAIM`` create-only, upload the files create-only, then the manifest (last)."""
    base = _base(root, name)
    with tempfile.TemporaryDirectory(prefix="aitasks-publish-") as d:
        staging = Path(d)
        _stage(source_dir, staging, files)  # upload a snapshot whose bytes match the manifest
        start = max(_version_numbers(root, name, st, complete=False), default=0) + 1
        claim = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "at": _now(),
                "content_hash": manifest_for(1).content_hash,
            }
        ).encode("utf-8")
        for n in range(start, start + _MAX_RACES):
            prefix = join_uri(base, f"v{n}")
            claim_uri = join_uri(prefix, CLAIM)
            try:
                st.write_bytes(claim_uri, claim, if_absent=True)
            except (PreconditionFailedError, FileExistsError):
                continue  # another publisher owns v<N> (or a killed one abandoned it)
            mine = st.version(claim_uri)
            for rel in files:
                st.put_file(staging / rel, join_uri(prefix, rel), if_absent=True)
            if st.version(claim_uri) != mine:  # stalled past the sweep age: the claim was swept
                raise PreconditionFailedError(f"{claim_uri} was swept while this publisher stalled")
            st.write_bytes(
                join_uri(prefix, MANIFEST), manifest_for(n).model_dump_json(indent=2).encode(), if_absent=True
            )
            return n
    raise PreconditionFailedError(f"could not claim a version under {base}: {_MAX_RACES} lost races")


# ---------------------------------------------------------------------------------------- public API
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
    sweep_after_s: float | None = SWEEP_AFTER_S,
) -> PublishResult:
    """Publish the files of ``source_dir`` as the next version of ``name`` and switch CURRENT to it.

    ``source_dir`` holds what :meth:`AnnIndex.save` wrote (``index.bin``, ``ids.json``) plus any
    companion files (e.g. ``seen.parquet``); hidden files and a bundle's ``MANIFEST.json`` are left
    out. When a version with the same content hash (files, build parameters, model) exists, nothing
    is written: CURRENT is pointed at it (after verifying its files), unless a rollback moved away
    from it, and ``created`` is False.

    Args:
        root: Local directory or ``gs://bucket/prefix``.
        name: Index name, ``^[a-z][a-z0-9_-]{0,62}$``.
        source_dir: Local directory with the files.
        backend, dim, m, ef_construction, ef_search, recall_at_k, k: Build facts for the manifest.
        model_name, model_version: The model whose embeddings were indexed.
        extra: Lineage (data snapshot hash, trace id, run id, ...): recorded, not part of the content hash.
        storage: Storage serving ``root`` (default: :func:`storage_for`).
        sweep_after_s: First remove killed publishers' leftovers untouched for this long (see
            :func:`sweep`; best effort: a failure is logged, never fails the publish). None: no sweep.

    Raises:
        InvalidInputError: A bad name, source directory or build fact, or an id map that disagrees
            with ``backend``/``dim``.
        PreconditionFailedError: Lost too many races in a row (retryable).
    """
    st = _st(root, storage)
    base = _base(root, name)
    files = _source_files(source_dir)
    try:
        id_backend, id_dim, ids = read_id_map(source_dir)
    except DataFormatError as exc:
        raise InvalidInputError(_TASK, [FieldIssue("source_dir", str(exc))]) from None
    if (id_backend, id_dim) != (backend, dim):
        raise InvalidInputError(
            _TASK, [FieldIssue("backend", f"id map says {id_backend}/{id_dim}, caller says {backend}/{dim}")]
        )
    params = {"backend": backend, "dim": dim, "m": m, "ef_construction": ef_construction, "ef_search": ef_search}
    content_hash = sha256_json({"files": files, "params": params, "model": [model_name, model_version]})
    fields: dict[str, object] = {
        "name": name,
        **params,
        "count": len(ids),
        "recall_at_k": recall_at_k,
        "k": k,
        "files": files,
        "content_hash": content_hash,
        "model_name": model_name,
        "model_version": model_version,
        "created_at": _now(),
        "extra": dict(extra or {}),
    }

    def manifest_for(n: int) -> IndexManifest:
        return IndexManifest.model_validate({**fields, "version": n})

    try:
        manifest_for(1)
    except ValidationError as exc:
        issues = [FieldIssue(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise InvalidInputError(_TASK, issues) from None
    swept = _sweep_best_effort(root, name, st, sweep_after_s)

    for v in _version_numbers(root, name, st):
        existing = _read_manifest(root, name, v, st)
        if existing.content_hash == content_hash:
            pointer = _update_pointer(root, name, st, _switch_to_existing(root, name, existing, st))
            return PublishResult(
                version=v,
                uri=join_uri(base, f"v{v}"),
                manifest=existing,
                created=False,
                current=pointer is not None and pointer.version == v,
                swept=swept,
            )
    if is_gcs(root):
        n = _write_gcs_version(st, root, name, source_dir, files, manifest_for)
    else:
        n = _write_local_version(Path(base), source_dir, files, manifest_for)
    _update_pointer(root, name, st, lambda p: None if p is not None and p.version == n else _moved(p, n))
    return PublishResult(
        version=n, uri=join_uri(base, f"v{n}"), manifest=manifest_for(n), created=True, current=True, swept=swept
    )


def _switch_to_existing(
    root: str, name: str, manifest: IndexManifest, st: Storage
) -> Callable[[CurrentPointer | None], CurrentPointer | None]:
    verified = False

    def decide(pointer: CurrentPointer | None) -> CurrentPointer | None:
        nonlocal verified
        v = manifest.version
        if pointer is not None and (pointer.version == v or v in pointer.rolled_back):
            return None
        if not verified:  # never point CURRENT at files that do not verify
            _verify(root, name, manifest, st)
            verified = True
        return _moved(pointer, v)

    return decide


def read_pointer(root: str, name: str, *, storage: Storage | None = None) -> CurrentPointer | None:
    """The content of ``CURRENT`` (None when nothing was published)."""
    return _read_pointer(root, name, _st(root, storage))[0]


def read_current(root: str, name: str, *, storage: Storage | None = None) -> IndexManifest:
    """The manifest of the version CURRENT points at.

    Raises:
        NoPublishedIndexError: Nothing was published under that name (a :class:`DataFormatError`).
        DataFormatError: A malformed pointer or manifest.
    """
    st = _st(root, storage)
    pointer, _ = _read_pointer(root, name, st)
    if pointer is None:
        raise NoPublishedIndexError(root, name)
    return _read_manifest(root, name, pointer.version, st)


def list_versions(root: str, name: str, *, storage: Storage | None = None) -> list[IndexManifest]:
    """Manifests of every complete version, oldest first."""
    st = _st(root, storage)
    return [_read_manifest(root, name, v, st) for v in _version_numbers(root, name, st)]


def _default_cache(root: str) -> Path:
    from aitasks.platform.files import root_cache_dir

    return root_cache_dir("index-cache", root)


def _verified_dir(root: str, name: str, manifest: IndexManifest, st: Storage, cache_dir: Path | None) -> Path:
    """A local directory with the version's files, each checked against the manifest's sha256."""
    prefix = join_uri(_base(root, name), f"v{manifest.version}")
    if not is_gcs(root):
        local = Path(prefix)
        for rel, digest in manifest.files.items():
            p = local / rel
            if not p.is_file():
                raise DataFormatError(str(p), f"file {rel} of {name} v{manifest.version} is missing")
            if sha256_file(p) != digest:
                raise DataFormatError(str(p), f"file {rel} of {name} v{manifest.version} does not match its sha256")
        return local
    local = (cache_dir or _default_cache(root)) / name / f"v{manifest.version}"
    local.mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel, digest in manifest.files.items():
        target = local / rel
        if target.is_file() and sha256_file(target) == digest:
            continue  # cached by an earlier load
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Concurrent loaders sharing the cache never see a partial file. No fsync: a cache whose
            # loss in a power cut costs a download again, and every use re-checks the sha256.
            with atomic_path(target, fsync=False, sync_dir=False) as part:
                st.get_file(join_uri(prefix, rel), part)
                if sha256_file(part) != digest:
                    raise DataFormatError(
                        join_uri(prefix, rel), f"file {rel} of {name} v{manifest.version} does not match its sha256"
                    )
        except FileNotFoundError:
            raise DataFormatError(
                join_uri(prefix, rel), f"file {rel} of {name} v{manifest.version} is missing"
            ) from None
    return local


def _verify(root: str, name: str, manifest: IndexManifest, st: Storage) -> None:
    """Check a version's files before pointing CURRENT at it (GCS: downloaded to a throwaway dir)."""
    if not is_gcs(root):
        _verified_dir(root, name, manifest, st, None)
        return
    with tempfile.TemporaryDirectory(prefix="aitasks-verify-") as d:
        _verified_dir(root, name, manifest, st, Path(d))


def load_version(
    root: str, name: str, version: int, *, storage: Storage | None = None, cache_dir: Path | None = None
) -> tuple[AnnIndex, IndexManifest, Path]:
    """A verified version: the loaded index (ef_search from the manifest), its manifest and its local directory.

    GCS versions are downloaded into ``cache_dir`` (default: a per-root directory under the system temp
    dir), reusing files already there whose sha256 matches.

    Raises:
        DataFormatError: A missing version or file, or a file that does not match its sha256.
    """
    st = _st(root, storage)
    manifest = _read_manifest(root, name, version, st)
    local = _verified_dir(root, name, manifest, st, cache_dir)
    index = AnnIndex.load(
        local, ef=manifest.ef_search, backend=manifest.backend, dim=manifest.dim, count=manifest.count
    )
    return index, manifest, local


def load_current(
    root: str, name: str, *, storage: Storage | None = None, cache_dir: Path | None = None
) -> tuple[AnnIndex, IndexManifest, Path]:
    """The version CURRENT points at, verified and loaded (see :func:`load_version`).

    Raises:
        NoPublishedIndexError: Nothing was published under that name.
        DataFormatError: A file that fails its checksum, or a malformed manifest.
    """
    manifest = read_current(root, name, storage=storage)
    return load_version(root, name, manifest.version, storage=storage, cache_dir=cache_dir)


def rollback(root: str, name: str, *, to: int | None = None, storage: Storage | None = None) -> int:
    """Point CURRENT at ``to`` (default: the previous version in its history); returns the new current version.

    ``to=None`` undoes the last switch (pops the history); an explicit ``to`` is itself undoable (the
    version left joins the history). Either way the version left is remembered in ``rolled_back``
    so a re-run of the pipeline that published it does not bring it back; ``rollback(to=N)`` can.
    The target's manifest and files are verified before the switch.

    Raises:
        NoPublishedIndexError: Nothing was published under that name.
        InvalidInputError: No earlier version to go back to, or a bad ``to``.
        DataFormatError: The target does not exist or does not verify.
    """
    st = _st(root, storage)
    if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 1):
        raise InvalidInputError(_TASK, [FieldIssue("to", f"must be a version number >= 1, got {to!r}")])
    verified: set[int] = set()

    def decide(pointer: CurrentPointer | None) -> CurrentPointer | None:
        if pointer is None:
            raise NoPublishedIndexError(root, name)
        if to is None:
            if not pointer.history:
                raise InvalidInputError(
                    _TASK,
                    [
                        FieldIssue(
                            "to", f"{name} has no earlier version to roll back to (CURRENT is v{pointer.version})"
                        )
                    ],
                )
            target, history = pointer.history[-1], pointer.history[:-1]
        else:
            if to == pointer.version:
                return None
            target, history = to, [*pointer.history, pointer.version]
        if target not in verified:
            _verify(root, name, _read_manifest(root, name, target, st), st)
            verified.add(target)
        new = _moved(pointer, target, history=history)
        rolled_back = [v for v in pointer.rolled_back if v not in (target, pointer.version)] + [pointer.version]
        return new.model_copy(update={"rolled_back": rolled_back[-_KEEP_HISTORY:]})

    pointer = _update_pointer(root, name, st, decide)
    assert pointer is not None  # decide raises when CURRENT is absent
    return pointer.version


# ---------------------------------------------------------------------------------------- cleanup
class PruneResult(BaseModel):
    """Outcome of :func:`prune`: the versions kept and removed, and what the sweep removed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kept: list[int]
    removed: list[int]
    restored: list[int] = Field(default_factory=list)  # became current while being pruned: put back
    swept: list[str] = Field(default_factory=list)
    dry_run: bool = False


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything under it (links not followed)."""
    newest = path.lstat().st_mtime
    for dirpath, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            try:
                newest = max(newest, (Path(dirpath) / entry).lstat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _claim_time(st: Storage, uri: str) -> float | None:
    """When a GCS claim was written (its ``at``; a tombstone: 0, already swept); None when unreadable (kept)."""
    try:
        body = json.loads(st.read_bytes(uri))
        if "swept_at" in body:
            return 0.0
        return datetime.fromisoformat(str(body["at"])).timestamp()
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None


def sweep(
    root: str,
    name: str,
    *,
    older_than_s: float = SWEEP_AFTER_S,
    storage: Storage | None = None,
    now: float | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Remove what killed publishers and prunes left behind, once it has been untouched for ``older_than_s``.

    Local: hidden ``.v-tmp-*`` (publish) and ``.v-del-*`` (prune) directories whose newest file is older
    than that. GCS: ``v<N>/`` prefixes without a manifest whose claim is older than that (or that lost
    their claim): their objects are deleted, and the claim too unless N is the highest number in use,
    whose claim becomes a tombstone (N must never be claimed again, see the module docstring). Complete
    versions are never touched. Returns the removed directories or prefixes.
    """
    _check_name(name)
    st = _st(root, storage)
    t = time.time() if now is None else now
    if is_gcs(root):
        return _sweep_gcs(root, name, st, older_than_s, t, dry_run)
    removed: list[str] = []
    base = Path(_base(root, name))
    if not base.is_dir():
        return removed
    for child in sorted(base.iterdir()):
        if not child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) or child.is_symlink() or not child.is_dir():
            continue
        try:
            if t - _newest_mtime(child) < older_than_s:
                continue
        except FileNotFoundError:
            continue  # renamed into place or removed meanwhile
        if not dry_run:
            shutil.rmtree(child)
        removed.append(str(child))
    return removed


def _sweep_gcs(root: str, name: str, st: Storage, older_than_s: float, t: float, dry_run: bool) -> list[str]:
    removed: list[str] = []
    base = _base(root, name)
    by_version: dict[int, set[str]] = {}
    for uri in st.list(base + "/"):
        parts = uri[len(base) + 1 :].split("/", 1)
        if len(parts) == 2 and (m := _VERSION_DIR.match(parts[0])):
            by_version.setdefault(int(m.group(1)), set()).add(parts[1])
    top = max(by_version, default=0)
    for n, names in sorted(by_version.items()):
        if MANIFEST in names:
            continue
        prefix = join_uri(base, f"v{n}")
        claim_uri = join_uri(prefix, CLAIM)
        if CLAIM in names:
            claimed = _claim_time(st, claim_uri)
            if claimed is None or t - claimed < older_than_s:
                continue  # a live publisher's claim, or one it cannot date
            if claimed == 0.0 and names == {CLAIM} and n == top:
                continue  # a bare tombstone on the highest number in use stays
        removed.append(prefix + "/")
        if dry_run:
            continue
        for rel in sorted(names - {CLAIM}):
            st.delete(join_uri(prefix, rel))
        if n < top:
            st.delete(claim_uri)
        elif CLAIM in names and _claim_time(st, claim_uri) != 0.0:
            tombstone = {"swept_at": _now(), "note": "abandoned claim swept; this number is never reused"}
            st.write_bytes(claim_uri, json.dumps(tombstone).encode("utf-8"))
    return removed


def _sweep_best_effort(root: str, name: str, st: Storage, older_than_s: float | None) -> list[str]:
    if older_than_s is None:
        return []
    try:
        return sweep(root, name, older_than_s=older_than_s, storage=st)
    except Exception as exc:  # cleanup must never fail a publish
        from aitasks.runtime.logging import get_logger

        get_logger().warning("index.sweep_failed", index=name, error_kind=type(exc).__name__, error=str(exc))
        return []


def _remove_version(root: str, name: str, version: int, st: Storage) -> bool:
    """Make ``version`` invisible, re-read CURRENT, then delete it; False when it became current (put back)."""
    base = _base(root, name)
    if not is_gcs(root):
        src = Path(base) / f"v{version}"
        trash = Path(base) / f"{_TRASH_PREFIX}{version}-{uuid.uuid4().hex}"
        src.rename(trash)
        fsync_path(Path(base))
        pointer, _ = _read_pointer(root, name, st)
        if pointer is not None and pointer.version == version:
            trash.rename(src)  # the number is never reused, so v<N> is still free
            fsync_path(Path(base))
            return False
        shutil.rmtree(trash)
        return True
    prefix = join_uri(base, f"v{version}")
    manifest_uri = join_uri(prefix, MANIFEST)
    manifest = st.read_bytes(manifest_uri)
    st.delete(manifest_uri)  # readers and publishers no longer see the version
    pointer, _ = _read_pointer(root, name, st)
    if pointer is not None and pointer.version == version:
        st.write_bytes(manifest_uri, manifest, if_absent=True)
        return False
    for uri in st.list(prefix + "/"):
        if not uri.endswith("/" + CLAIM):
            st.delete(uri)
    st.delete(join_uri(prefix, CLAIM))  # last: the number stays in use until the files are gone
    return True


def prune(
    root: str,
    name: str,
    *,
    keep: int,
    storage: Storage | None = None,
    sweep_after_s: float | None = SWEEP_AFTER_S,
    dry_run: bool = False,
) -> PruneResult:
    """Delete old versions of ``name``: keep the ``keep`` newest, CURRENT's and its rollback target.

    Also sweeps killed publishers' leftovers older than ``sweep_after_s`` (None: no sweep). With
    ``dry_run`` nothing is deleted: the result says what would be.

    Raises:
        InvalidInputError: ``keep`` is not a number >= 1, or a bad name.
        NoPublishedIndexError: Nothing was published under that name.
    """
    _check_name(name)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInputError("index.prune", [FieldIssue("keep", f"must be a number >= 1, got {keep!r}")])
    st = _st(root, storage)
    swept = [] if sweep_after_s is None else sweep(root, name, older_than_s=sweep_after_s, storage=st, dry_run=dry_run)
    pointer, _ = _read_pointer(root, name, st)
    if pointer is None:
        raise NoPublishedIndexError(root, name)
    versions = _version_numbers(root, name, st)
    protected = {pointer.version, *pointer.history[-1:]}
    kept = sorted(set(versions[-keep:]) | (protected & set(versions)))
    victims = [v for v in versions if v not in kept]
    removed: list[int] = []
    restored: list[int] = []
    for v in victims:
        if dry_run or _remove_version(root, name, v, st):
            removed.append(v)
        else:
            restored.append(v)
    return PruneResult(
        kept=sorted([*kept, *restored]), removed=removed, restored=restored, swept=swept, dry_run=dry_run
    )
