"""Image pins of the manifests: `python -m tests.manifests.digests` (make lint).

- Third-party images: manifests/overlays/prod/kustomization.yaml lists every one under `images:` with
  its tag and a `digest:` to fill at release (sha256:<64 hex>; kustomize renders name:tag@digest). An
  empty digest is a clearly marked placeholder: the image is still pinned by tag only. This report
  lists the placeholders and exits 0, or 1 with AITASKS_REQUIRE_DIGESTS=1 (set it for a release).
  Digests are never invented here: they come from the registry at release (docs/en/install.md).
- Our cpu image (MLflow server, Feast apply Job): manifests/base/kustomization.yaml pins a content tag
  CI pushed; the report says when the working tree's content tag differs (bump it at release).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "manifests" / "overlays" / "prod" / "kustomization.yaml"
BASE = ROOT / "manifests" / "base" / "kustomization.yaml"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def image_entries(path: Path = PROD) -> list[dict[str, Any]]:
    """The `images:` entries of a kustomization."""
    return list(yaml.safe_load(path.read_text()).get("images") or [])


def entry_problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong with one entry (empty: a tag plus either a digest or the empty placeholder)."""
    name = entry.get("name", "?")
    problems = []
    if not entry.get("newTag"):
        problems.append(f"{name}: no newTag (the tag documents what the digest pins)")
    if "digest" not in entry:
        problems.append(f'{name}: no digest field (write digest: "" until the release fills it)')
    elif entry["digest"] and not DIGEST.fullmatch(str(entry["digest"])):
        problems.append(f"{name}: digest {entry['digest']!r} is not sha256:<64 hex>")
    if entry.get("newName"):
        problems.append(f"{name}: newName would swap the image; pin the one the base names")
    return problems


def pending(path: Path = PROD) -> list[str]:
    """``name:tag`` of every entry whose digest is still the empty placeholder."""
    return [f"{e['name']}:{e.get('newTag', '?')}" for e in image_entries(path) if not e.get("digest")]


def platform_image_tags() -> dict[str, str]:
    """Image name -> tag pinned for our own images in manifests/base/kustomization.yaml."""
    return {e["name"]: e["newTag"] for e in image_entries(BASE)}


def content_tag(key: str) -> str:
    """The working tree's content tag of image ``key`` (components/images.py, standard library only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_aitasks_images", ROOT / "components" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.content_tag(key))


def main() -> int:
    problems = [p for e in image_entries() for p in entry_problems(e)]
    for p in problems:
        print(f"digests: {p}", file=sys.stderr)
    waiting = pending()
    if waiting:
        print(
            f"digests: {len(waiting)} third-party image(s) in the prod overlay are pinned by tag only "
            "(digest placeholder in manifests/overlays/prod/kustomization.yaml): " + ", ".join(waiting)
        )
    else:
        print("digests: every third-party image in the prod overlay is pinned by digest")
    for name, tag in platform_image_tags().items():
        current = content_tag(name.rsplit("-", 1)[-1])
        if tag != current:
            print(
                f"digests: the platform services run {name.rsplit('/', 1)[-1]}:{tag}; this tree's content tag is "
                f"{current} (bump manifests/base/kustomization.yaml at release, once CI pushed it)"
            )
    strict = os.environ.get("AITASKS_REQUIRE_DIGESTS") in {"1", "true"}
    return 1 if problems or (strict and waiting) else 0


if __name__ == "__main__":
    sys.exit(main())
