"""Content-derived image tags (components/images.py): what changes a tag, what never does, and who names it.

The hash is built over a temporary copy of the image inputs, so each test edits files freely: a tag must
change with the code, the dependencies or the Dockerfile, and never with bytecode caches, mtimes, line
endings, the README, git or the machine.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components import images
from components.images import content_hash, content_tag, copied_sources, image_for, image_uri, inputs

ROOT = Path(__file__).resolve().parents[2]
KEYS = sorted(images._table()["images"])
TAG = re.compile(r"^\d+\.\d+\.\d+-[0-9a-f]{24}$")
A_MODULE = "src/aitasks/runtime/errors.py"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of every image input (and the README) in a directory that is not a git checkout."""
    for rel in sorted({f for key in KEYS for f in inputs(key)} | {"README.md"}):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    return tmp_path


def _tags(root: Path) -> dict[str, str]:
    return {key: content_tag(key, root) for key in KEYS}


# ---- the scheme ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", KEYS)
def test_tag_is_the_project_version_and_96_bits_of_the_content_hash(key: str) -> None:
    tag = content_tag(key)
    assert TAG.match(tag), tag
    assert tag.endswith("-" + content_hash(key)[:24])
    assert image_uri(key) == f"{images._table()['images'][key]}:{tag}"


def test_a_copy_outside_git_hashes_like_the_checkout(tree: Path) -> None:
    assert not (tree / ".git").exists()
    assert _tags(tree) == _tags(ROOT)


def test_the_hash_covers_the_dockerfile_the_build_files_and_every_source_module() -> None:
    for key in KEYS:
        files = inputs(key)
        assert {f"images/{key}/Dockerfile", "pyproject.toml", "requirements.lock"} <= set(files)
        assert A_MODULE in files and "src/aitasks/py.typed" in files
        assert "README.md" not in files, "the README is only the wheel's long description"
        assert files == sorted(files)
        assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".pyo")) or "egg-info" in f]
    assert "images/gpu/requirements-gpu.txt" in inputs("gpu")
    assert "images/gpu/requirements-gpu.txt" not in inputs("cpu")


def test_every_tracked_file_of_the_copied_paths_is_hashed() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to compare with (the hash itself never needs git)")
    for key in KEYS:
        copied = [s for s in copied_sources((ROOT / "images" / key / "Dockerfile").read_text()) if s != "README.md"]
        tracked = subprocess.run(
            [git, "ls-files", "--", *copied], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        missing = sorted(set(tracked) - set(inputs(key)))
        assert not missing, f"{key}: tracked but not hashed: {missing}"


# ---- what changes a tag -------------------------------------------------------------------------------
def test_a_source_change_gives_both_images_a_new_tag(tree: Path) -> None:
    before = _tags(tree)
    path = tree / A_MODULE
    path.write_text(path.read_text() + "\n# a change\n")
    after = _tags(tree)
    assert all(after[k] != before[k] for k in KEYS), (before, after)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: (t / "src/aitasks/new_module.py").write_text("X = 1\n"),
        lambda t: (t / A_MODULE).rename(t / "src/aitasks/runtime/errors2.py"),
        lambda t: (t / A_MODULE).unlink(),
        lambda t: (t / "pyproject.toml").write_text((t / "pyproject.toml").read_text() + "\n# x\n"),
        lambda t: (t / "requirements.lock").write_text((t / "requirements.lock").read_text() + "extra==1.0\n"),
    ],
    ids=["new-module", "renamed-module", "deleted-module", "pyproject", "lock"],
)
def test_code_and_dependency_changes_change_every_tag(tree: Path, edit: Callable[[Path], object]) -> None:
    before = _tags(tree)
    edit(tree)
    after = _tags(tree)
    assert all(after[k] != before[k] for k in KEYS)


def test_a_dockerfile_or_gpu_pin_changes_only_its_own_image(tree: Path) -> None:
    before = _tags(tree)
    cpu = tree / "images/cpu/Dockerfile"
    cpu.write_text(cpu.read_text() + "# rebuild\n")
    mid = _tags(tree)
    assert mid["cpu"] != before["cpu"] and mid["gpu"] == before["gpu"]
    gpu = tree / "images/gpu/requirements-gpu.txt"
    gpu.write_text(gpu.read_text() + "\n")
    after = _tags(tree)
    assert after["gpu"] != mid["gpu"] and after["cpu"] == mid["cpu"]


# ---- what never changes a tag ------------------------------------------------------------------------
def test_bytecode_caches_and_hidden_files_do_not_change_a_tag(tree: Path) -> None:
    before = _tags(tree)
    pkg = tree / "src" / "aitasks" / "runtime"
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "errors.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (pkg / "stray.pyc").write_bytes(b"\x00")
    (pkg / ".DS_Store").write_bytes(b"junk")
    (tree / "src" / "aitasks.egg-info").mkdir()
    (tree / "src" / "aitasks.egg-info" / "PKG-INFO").write_text("Name: aitasks\n")
    assert _tags(tree) == before


def test_mtimes_do_not_change_a_tag(tree: Path) -> None:
    before = _tags(tree)
    for rel in inputs("cpu"):
        os.utime(tree / rel, (1_000_000_000, 1_000_000_000))
    path = tree / A_MODULE
    path.write_bytes(path.read_bytes())  # rewritten, same bytes, new mtime
    assert _tags(tree) == before


def test_crlf_line_endings_and_the_readme_do_not_change_a_tag(tree: Path) -> None:
    before = _tags(tree)
    path = tree / A_MODULE
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    (tree / "README.md").write_text("# rewritten docs\n")
    assert _tags(tree) == before


def test_the_tag_is_the_same_in_a_fresh_interpreter_anywhere(tmp_path: Path) -> None:
    """Isolated (-I), without site-packages (-S), another cwd, another hash seed, no PATH (so no git)."""
    for key in KEYS:
        out = subprocess.run(
            [sys.executable, "-I", "-S", str(ROOT / "components" / "images.py"), "uri", key],
            cwd=tmp_path,
            env={"PYTHONHASHSEED": "12345", "LC_ALL": "C"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == image_uri(key)


def test_the_script_refuses_unknown_commands_and_keys() -> None:
    assert images.main(["uri", "tpu"]) == 2
    assert images.main(["push", "cpu"]) == 2
    assert images.main([]) == 2


# ---- the Dockerfile reader ------------------------------------------------------------------------------
def test_copied_sources_follow_the_dockerfiles() -> None:
    assert copied_sources((ROOT / "images/cpu/Dockerfile").read_text()) == [
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "src",
    ]
    assert "images/gpu/requirements-gpu.txt" in copied_sources((ROOT / "images/gpu/Dockerfile").read_text())


def test_copied_sources_read_flags_continuations_json_and_skip_stage_copies() -> None:
    text = (
        "# syntax=docker/dockerfile:1.7\nFROM x AS a\nCOPY --chown=1:1 a.txt \\\n"
        "  # a comment inside\n  ./b/ /dst/\nCOPY --from=a /opt /opt\n"
        'ADD ["c d.txt", "/x/"]\nRUN echo COPY nothing\n'
    )
    assert copied_sources(text) == ["a.txt", "b", "c d.txt"]


@pytest.mark.parametrize("copy", ["COPY src/*.py /x/", "COPY . /src", "COPY $DIR /x", "ADD https://e.x/f /f"])
def test_copies_that_are_not_named_files_are_refused(copy: str) -> None:
    with pytest.raises(ValueError, match="literally"):
        copied_sources(f"FROM x\n{copy}\n")


def test_a_copied_path_that_does_not_exist_fails(tree: Path) -> None:
    (tree / "requirements.lock").unlink()
    with pytest.raises(FileNotFoundError, match=r"requirements\.lock"):
        content_tag("cpu", tree)


def test_images_module_imports_only_the_standard_library() -> None:
    tree = ast.parse((ROOT / "components" / "images.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


# ---- who names the tag ------------------------------------------------------------------------------------
def test_every_family_resolves_to_its_image_content_tag() -> None:
    table = images._table()
    for family, key in table["families"].items():
        assert image_for(family) == f"{table['images'][key]}:{content_tag(key)}"


def test_compiled_pipelines_name_the_tags_components_images_computes() -> None:
    """The committed YAML (what CI uploads) names exactly the images CI builds from this checkout."""
    ours = {image_uri(key) for key in KEYS}
    registry = images._table()["registry"]
    named: set[str] = set()
    for path in sorted((ROOT / "pipelines" / "compiled").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for executor in (doc or {}).get("deploymentSpec", {}).get("executors", {}).values():
                image = executor["container"]["image"]
                assert not image.startswith(registry) or image in ours, f"{path.name}: {image} (run `make compile`)"
                named.add(image)
    assert named & ours, "no compiled pipeline runs an aitasks image"
