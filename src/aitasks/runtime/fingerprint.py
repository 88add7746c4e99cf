"""Code fingerprints: the source a task runs is part of its idempotency key.

A task's version is bumped by hand; its code changes with every commit. Without the code in the key,
an edited task body whose version nobody bumped returns the result its old body committed (the hazard
KFP users meet with its cache, which ignores image digests). The fingerprint of a task is the sha256
of the source of its module and of every first-party module that module imports, transitively: the
imports are read from the syntax tree, so imports inside functions count too.

First party means the ``aitasks`` package and the task module's own top-level package. Third-party
libraries are not hashed: they are pinned by the lock file and baked into immutable image tags.
Without readable source (a byte-code-only install) the installed distribution's version stands in.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import threading
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

_LOCK = threading.Lock()


@cache
def _source(module: str) -> bytes | None:
    """The source bytes of ``module``, or None when it is not a first-party source file."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        with open(spec.origin, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _is_package(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


@cache
def _imports(module: str) -> tuple[str, ...]:
    """Modules named by ``module``'s import statements (anywhere in its syntax tree), resolved."""
    src = _source(module)
    if src is None:
        return ()
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return ()
    package = module if _is_package(module) else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                try:
                    base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                except ImportError:
                    continue
            else:
                base = node.module or ""
            if not base:
                continue
            out.add(base)
            # `from pkg import mod` imports a module when ``mod`` is one.
            out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return tuple(sorted(out))


def _parents(module: str) -> Iterable[str]:
    parts = module.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def module_closure(module: str, roots: Iterable[str] = ("aitasks",)) -> dict[str, str]:
    """``{module: sha256 of its source}`` for ``module`` and the first-party modules it imports.

    Args:
        module: Dotted module name to start from.
        roots: Top-level packages counted as first party (``module``'s own is always added).
    """
    first_party = set(roots) | {module.split(".", maxsplit=1)[0]}
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in first_party:
            continue
        src = _source(name)
        if src is None:
            continue
        seen[name] = hashlib.sha256(src).hexdigest()
        todo.extend(_imports(name))
        # Importing a submodule runs its packages' __init__ modules.
        todo.extend(_parents(name))
    return dict(sorted(seen.items()))


def _distribution_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aitasks")
    except PackageNotFoundError:
        return "unknown"


@cache
def _module_fingerprint(module: str) -> str:
    closure = module_closure(module)
    if not closure:
        return "dist:" + _distribution_version()
    h = hashlib.sha256()
    for name, digest in closure.items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Fingerprint of the code behind ``fn``: its module and the first-party modules it imports.

    Computed once per module and process (source files do not change under a running process).
    """
    with _LOCK:
        return _module_fingerprint(getattr(fn, "__module__", "") or "")


def clear_cache() -> None:
    """Forget every computed fingerprint (tests that edit source files call this)."""
    for f in (_source, _imports, _module_fingerprint):
        f.cache_clear()
