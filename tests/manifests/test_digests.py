"""Third-party images in prod: every one is listed for digest pinning (tests/manifests/digests.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.manifests import digests
from tests.manifests._k8s import ROOT, containers, pod_spec, render


def third_party_images() -> set[str]:
    registry = json.loads((ROOT / "images" / "images.json").read_text())["registry"]
    out = set()
    for d in render("prod"):
        if (spec := pod_spec(d)) is not None:
            out |= {c["image"] for c in containers(spec) if not c["image"].startswith(registry)}
    return out


def test_every_third_party_image_in_prod_is_in_the_digest_table() -> None:
    entries = {e["name"]: e for e in digests.image_entries()}
    for image in third_party_images():
        name_tag = image.split("@", 1)[0]
        name, tag = name_tag.rsplit(":", 1)
        assert name in entries, f"{name} is not listed under images: in the prod overlay"
        assert entries[name]["newTag"] == tag
        digest = entries[name].get("digest")
        assert image == (f"{name_tag}@{digest}" if digest else name_tag), image
    for entry in entries.values():
        assert digests.entry_problems(entry) == [], entry


def test_pending_digests_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """A placeholder is visible in `make lint` output; a release sets AITASKS_REQUIRE_DIGESTS=1."""
    waiting = digests.pending()
    code = digests.main()
    out = capsys.readouterr().out
    for image in waiting:
        assert image in out
    strict = os.environ.get("AITASKS_REQUIRE_DIGESTS") in {"1", "true"}
    assert code == (1 if strict and waiting else 0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "r", "newTag": "1", "digest": "sha256:abc"}, "not sha256"),
        ({"name": "r", "newTag": "1"}, "no digest field"),
        ({"name": "r", "digest": ""}, "no newTag"),
        ({"name": "r", "newTag": "1", "digest": "", "newName": "x"}, "newName"),
    ],
)
def test_bad_entries_are_refused(entry: dict[str, str], message: str) -> None:
    assert any(message in p for p in digests.entry_problems(entry))


def test_a_filled_digest_renders_as_tag_at_digest(tmp_path: Path) -> None:
    """The mechanism itself: kustomize turns a filled digest into name:tag@digest."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    digest = "sha256:" + "0" * 64  # a stand-in for this test only, never written to the overlays
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "    - {name: r, image: docker.io/library/redis:7.4.1-bookworm}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [pod.yaml]\nimages:\n"
        f"  - {{name: docker.io/library/redis, newTag: 7.4.1-bookworm, digest: '{digest}'}}\n"
    )
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], check=True, capture_output=True, text=True).stdout
    assert f"image: docker.io/library/redis:7.4.1-bookworm@{digest}" in out
