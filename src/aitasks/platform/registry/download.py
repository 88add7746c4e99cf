"""Downloading a version's files, each verified against the checksums the registry holds.

The tag ``aitasks.checksums_sha256`` lives in the registry database, the files in artifact storage,
so a file changed in storage fails :func:`download_model` even when its checksum list was rewritten
too. Pickle-based files and symbolic links are refused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from aitasks.platform.registry.aliases import get_version
from aitasks.platform.registry.config import ALIAS_TASK, RegisteredVersion, RegistryConfig, client, service
from aitasks.platform.registry.register import ARTIFACT_DIR, CHECKSUMS_FILE, CHECKSUMS_TAG, is_pickle
from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError
from aitasks.runtime.hashing import sha256_file

__all__ = ["download_model"]


def _verify(local: Path, expected_sha: str, where: str) -> None:
    """Check ``local`` against its ``checksums.json`` and that file against the version's tag."""
    files = sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        if path.is_symlink():
            raise DataFormatError(f"{where}/{path.relative_to(local).as_posix()}", "refusing a symbolic link")
        if is_pickle(path.name):
            raise DataFormatError(f"{where}/{path.relative_to(local).as_posix()}", "refusing pickle-based file")
    listing_path = local / CHECKSUMS_FILE
    if not listing_path.is_file():
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", "missing")
    if sha256_file(listing_path) != expected_sha:
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", f"does not match the version's {CHECKSUMS_TAG} tag")
    try:
        expected = json.loads(listing_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", "not valid JSON") from None
    present = {p.relative_to(local).as_posix() for p in files} - {CHECKSUMS_FILE}
    for rel, digest in sorted(expected.items()):
        path = local / rel
        if rel not in present:
            raise DataFormatError(f"{where}/{rel}", "listed in checksums.json but missing")
        if sha256_file(path) != digest:
            raise DataFormatError(f"{where}/{rel}", "sha256 does not match checksums.json")
    extra = sorted(present - set(expected))
    if extra:
        raise DataFormatError(f"{where}/{extra[0]}", "not listed in checksums.json")


def download_model(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None, dest: Path
) -> tuple[RegisteredVersion, Path]:
    """Download a version's ``model/`` files into ``dest/model`` and verify every file.

    Each file must match ``checksums.json``, which must match the version's ``aitasks.checksums_sha256``
    tag; pickle-based files and links are refused. A ``dest/model`` that already verifies is reused
    without a download (so ``dest`` can be a cache); a new copy is verified in a temporary directory
    under ``dest`` and then renamed into place, so a reader never sees a half-downloaded model.

    Args:
        cfg: The registry.
        version: Version number (exactly one of ``version`` and ``alias``).
        alias: Alias, e.g. ``champion``.
        dest: Local directory; created when missing.

    Returns:
        (the version, the local model directory ``dest/model``).

    Raises:
        InvalidInputError: No such version or alias (or neither / both given).
        DataFormatError: A missing, extra, altered or pickle-based file, or no checksums tag.
        ServiceUnavailableError: The registry or artifact store is unreachable.
    """
    mv = get_version(cfg, version=version, alias=alias)
    if mv is None:
        what = f"version {version}" if alias is None else f"alias {alias!r}"
        raise InvalidInputError(ALIAS_TASK, [FieldIssue("version" if alias is None else "alias", f"no {what}")])
    where = f"{mv.name} v{mv.version}"
    expected_sha = mv.tags.get(CHECKSUMS_TAG)
    if not expected_sha:
        raise DataFormatError(where, f"has no {CHECKSUMS_TAG} tag: not registered by aitasks, refusing to load it")
    local = dest / ARTIFACT_DIR
    if local.is_dir():
        with contextlib.suppress(DataFormatError):
            _verify(local, expected_sha, where)
            return mv, local
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        with service(cfg):
            client(cfg).download_artifacts(mv.run_id, ARTIFACT_DIR, str(staging))
        _verify(staging / ARTIFACT_DIR, expected_sha, where)
        if local.exists():
            local.rename(staging / "stale")
        try:
            (staging / ARTIFACT_DIR).rename(local)
        except OSError:
            # A concurrent download won the rename: use its copy when it verifies.
            _verify(local, expected_sha, where)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return mv, local
