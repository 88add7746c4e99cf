"""The image table (images/images.json) and the content tag of each image, at compile time and in CI.

An image's tag is derived from what the image is built from: ``<project version>-<24 hex>``, the hex
being a sha256 over the family's Dockerfile and every file its ``COPY`` instructions take from the
build context (``pyproject.toml``, ``requirements.lock``, ``src/``, ...; not ``README.md``, which only
becomes the wheel's long description). Any change to
the code or the dependencies gives a new tag, so the compiled pipelines name a new image and CI builds
and pushes it; an existing tag was built from the same content. The hash reads file contents only
(relative POSIX paths in sorted order, CRLF read as LF): no git, no mtimes, no caches, no machine.

Standard library only: components import this module at module level, and CI runs it as a script
(``python3 components/images.py uri cpu``) before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "images" / "images.json"
# Part of every hash: a change of the scheme (what is hashed, how) gives new tags, never a reused one.
SCHEME = "aitasks-image-content/v1"
HEX_DIGITS = 24  # 96 bits of the sha256 in the tag
# Never part of an image's content: bytecode and build caches (.dockerignore keeps them out of the
# context), and hidden names (editor, OS and tool droppings; the wheel packages none of them).
SKIPPED_DIRS = {"__pycache__"}
# Copied, but only as the wheel's long description (pyproject's `readme`): a doc edit rebuilds nothing.
DESCRIPTION_ONLY = {"README.md"}
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text("utf-8"))


def image_for(family: str) -> str:
    """Immutable image URI for a task family (``data_processing``, ``model_training``, ...)."""
    return image_uri(_table()["families"][family])


@cache
def image_uri(key: str) -> str:
    """``<registry>/aitasks-<key>:<content tag>`` for an image key of the table (``cpu``, ``gpu``)."""
    return f"{_table()['images'][key]}:{content_tag(key)}"


def content_tag(key: str, root: Path = ROOT) -> str:
    """``<project version>-<content hash>``: the tag CI pushes and the compiled pipelines name."""
    return f"{_project_version(root)}-{content_hash(key, root)[:HEX_DIGITS]}"


def content_hash(key: str, root: Path = ROOT) -> str:
    """sha256 (hex) over the scheme and, per input file in path order, its path and the sha256 of its bytes."""
    digest = hashlib.sha256(f"{SCHEME}\n".encode())
    for rel in inputs(key, root):
        data = (root / rel).read_bytes().replace(b"\r\n", b"\n")  # a CRLF checkout is the same content
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def inputs(key: str, root: Path = ROOT) -> list[str]:
    """The files image ``key`` is built from: its Dockerfile and every file its COPY/ADD sources hold."""
    dockerfile = f"images/{key}/Dockerfile"
    files = {dockerfile}
    for source in copied_sources((root / dockerfile).read_text("utf-8")):
        if source in DESCRIPTION_ONLY:
            continue
        path = root / source
        if path.is_file():
            files.add(source)
        elif path.is_dir():
            files.update(_walk(root, path))
        else:
            raise FileNotFoundError(f"{dockerfile}: COPY {source}: no such file or directory under {root}")
    return sorted(files)


def copied_sources(dockerfile: str) -> list[str]:
    """Build-context paths of the COPY/ADD instructions (``COPY --from=<stage>`` copies no context)."""
    sources: list[str] = []
    for keyword, args in _instructions(dockerfile):
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        for source in (w for w in words[:-1] if not w.startswith("--")):
            path = os.path.normpath(source).replace(os.sep, "/")
            if any(c in source for c in "*?[$") or "://" in source or path == "." or path.startswith(".."):
                # A glob, a variable, a URL or the whole context would make the inputs more than named files.
                raise ValueError(f"{keyword} {source}: name each copied path literally")
            sources.append(path)
    return sources


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _walk(root: Path, top: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not _skipped(d) and d not in SKIPPED_DIRS]
        base = Path(dirpath).relative_to(root)
        found.extend((base / f).as_posix() for f in filenames if not _skipped(f))
    return found


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith(SKIPPED_SUFFIXES)


def _project_version(root: Path) -> str:
    with (root / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def main(argv: list[str]) -> int:
    """``images.py {uri,tag,hash,inputs} KEY``: what CI builds and pushes, from this checkout."""
    commands = {
        "uri": image_uri,
        "tag": content_tag,
        "hash": content_hash,
        "inputs": lambda key: "\n".join(inputs(key)),
    }
    if len(argv) != 2 or argv[0] not in commands or argv[1] not in _table()["images"]:
        print(f"usage: images.py {{{','.join(commands)}}} {{{','.join(_table()['images'])}}}", file=sys.stderr)
        return 2
    print(commands[argv[0]](argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
