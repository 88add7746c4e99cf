"""Prompt files, prompt templates from catalog metadata, and prompt validation.

A prompt file is JSON Lines, one prompt per line::

    {"id": "pl-001", "kind": "text", "template": "playlist_title", "metadata": {"genre": "jazz", "mood": "late night"}}
    {"id": "blurb-7", "kind": "text", "template": "track_blurb", "metadata": {"title": "Blue Hour", "artist": "Mira"}}
    {"id": "cover-1", "kind": "image", "prompt": "album cover, neon city at night, synthwave"}
    {"id": "clip-1", "kind": "music", "prompt": "calm lo-fi beat with soft piano"}

``kind`` picks the generator (``text``, ``image``, ``music``). Text prompts either give ``prompt``
(template ``free``) or name a template that is rendered from the catalog ``metadata``
(:data:`TEMPLATES`). Every prompt is checked by :func:`check_prompt` before any model sees it; each
refusal names the prompt and the rule (:data:`RULES`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aitasks.content_generation.policy import BlockedTerms, bad_characters, personal_data, redact
from aitasks.runtime.hashing import sha256_text

__all__ = [
    "ID_PATTERN",
    "KINDS",
    "RULES",
    "TEMPLATES",
    "PromptPolicy",
    "PromptRecord",
    "Rejection",
    "ValidatedPrompt",
    "check_prompt",
    "excerpt",
    "parse_prompt_file",
    "plan_batches",
    "render_prompt",
]

Kind = Literal["text", "image", "music"]
KINDS: Final[tuple[str, ...]] = ("text", "image", "music")
ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"

#: Text templates: the metadata fields each needs, and how the model prompt is written from them. The tiny
#: test model is trained on text of the same shape (:mod:`aitasks.content_generation.catalog_text`).
TEMPLATES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "free": ((), "{prompt}"),
    "playlist_title": (("genre", "mood"), "Playlist: {genre} for {mood}.{tracks_part}\nTitle:"),
    "playlist_description": (("genre", "mood"), "Playlist: {genre} for {mood}.{tracks_part}\nDescription:"),
    "track_blurb": (("title", "artist"), "Track: {title} by {artist}{genre_part}{year_part}.\nBlurb:"),
}

#: Why a prompt is refused (rule -> meaning); a refusal carries one of these and a detail sentence.
RULES: Final[dict[str, str]] = {
    "malformed": "the line is not a valid prompt record (JSON, fields, types)",
    "duplicate_id": "another prompt of the file has the same id",
    "missing_metadata": "the template needs a metadata field the prompt lacks",
    "length": "the prompt is shorter or longer than allowed",
    "characters": "control, invisible or unassigned characters",
    "blocked_term": "a term of the blocked-terms list",
    "personal_data": "an e-mail address, phone number, payment card number or IBAN",
}


class PromptRecord(BaseModel):
    """One line of a prompt file."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(pattern=ID_PATTERN, description="Unique id within the file; names the outputs.")
    kind: Kind = Field(description="Generator: text, image or music.")
    prompt: str = Field(default="", max_length=20_000, description="Free prompt (image, music, free text).")
    template: Literal["free", "playlist_title", "playlist_description", "track_blurb"] = Field(
        default="free", description="Text template rendered from the metadata (text prompts only)."
    )
    metadata: dict[str, str | int | float | list[str]] = Field(
        default_factory=dict, max_length=32, description="Catalog metadata the template reads."
    )


class PromptPolicy(BaseModel):
    """What a prompt must satisfy; the blocked terms are given separately."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_chars: int = Field(default=3, ge=1, description="Shortest accepted prompt (characters, rendered).")
    max_chars: int = Field(default=400, ge=1, description="Longest accepted prompt (characters, rendered).")


@dataclass(frozen=True)
class Rejection:
    """Why one prompt (or one line) was refused."""

    prompt_id: str
    line: int
    rule: str
    detail: str
    #: The refused prompt with its personal data redacted (for reviewers; never the raw text).
    excerpt: str = ""

    def __str__(self) -> str:
        return f"prompt {self.prompt_id!r} (line {self.line}): {self.rule}: {self.detail}"


@dataclass(frozen=True)
class ValidatedPrompt:
    """An accepted prompt: the record, its file line, the text the model sees and that text's sha256."""

    record: PromptRecord
    line: int
    text: str

    @property
    def prompt_sha256(self) -> str:
        return sha256_text(self.text)

    def as_json(self, batch: int) -> dict[str, Any]:
        return {
            **self.record.model_dump(mode="json"),
            "line": self.line,
            "text": self.text,
            "prompt_sha256": self.prompt_sha256,
            "batch": batch,
        }


def _field_text(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def excerpt(rec: PromptRecord) -> str:
    """A short, safe view of a refused record: personal data redacted, invisible characters shown as U+FFFD."""
    raw = rec.prompt or ", ".join(f"{k}={_field_text(v)}" for k, v in rec.metadata.items())
    bad = {pos for pos, _ in bad_characters(raw)}
    shown = "".join("\ufffd" if i in bad else c for i, c in enumerate(raw))
    return redact(shown)[:300]


def render_prompt(rec: PromptRecord) -> str:
    """The text the model is given for ``rec`` (image, music and free text: the prompt itself).

    Raises:
        KeyError: A metadata field the template needs is missing (its name is the message).
    """
    if rec.kind != "text" or rec.template == "free":
        return rec.prompt
    needed, pattern = TEMPLATES[rec.template]
    meta = {k: _field_text(v).strip() for k, v in rec.metadata.items()}
    for name in needed:
        if not meta.get(name):
            raise KeyError(name)
    tracks = meta.get("tracks", "")
    text = pattern.format(
        **meta,
        tracks_part=f" Tracks: {tracks}." if tracks else "",
        genre_part=f", {meta['genre']}" if meta.get("genre") else "",
        year_part=f", {meta['year']}" if meta.get("year") else "",
    )
    return f"{rec.prompt}\n{text}" if rec.prompt else text


def check_prompt(
    rec: PromptRecord, line: int, policy: PromptPolicy, blocked: BlockedTerms
) -> tuple[ValidatedPrompt | None, list[Rejection]]:
    """Check one record against every rule; the prompt is accepted only when no rule refuses it.

    Every field that reaches the model or the outputs (prompt, metadata) is checked for characters,
    blocked terms and personal data; the rendered text is checked for length.
    """
    issues: list[Rejection] = []

    def refuse(rule: str, detail: str) -> None:
        issues.append(Rejection(rec.id, line, rule, detail, excerpt=excerpt(rec)))

    if rec.kind != "text" and rec.template != "free":
        refuse("malformed", f"template {rec.template!r} is for text prompts only")
    try:
        text = render_prompt(rec)
    except KeyError as missing:
        refuse("missing_metadata", f"template {rec.template!r} needs metadata field {missing.args[0]!r}")
        text = rec.prompt
    fields = {"prompt": rec.prompt, **{f"metadata.{k}": _field_text(v) for k, v in rec.metadata.items()}}
    for name, value in fields.items():
        for pos, what in bad_characters(value)[:1]:
            refuse("characters", f"{name} has {what} at position {pos}")
        terms = blocked.find(value)
        if terms:
            refuse("blocked_term", f"{name} contains blocked term(s) {', '.join(repr(t) for t in terms)}")
        kinds = sorted({p.kind for p in personal_data(value)})
        if kinds:
            refuse("personal_data", f"{name} contains {', '.join(kinds)}")
    size = len(text.strip())
    if size < policy.min_chars:
        refuse("length", f"{size} characters < minimum {policy.min_chars}")
    elif size > policy.max_chars:
        refuse("length", f"{size} characters > maximum {policy.max_chars}")
    if issues:
        return None, issues
    return ValidatedPrompt(rec, line, text), []


def parse_prompt_file(
    raw: bytes, policy: PromptPolicy, blocked: BlockedTerms, *, max_prompts: int
) -> tuple[list[ValidatedPrompt], list[Rejection]]:
    """Parse and check every line of a JSON Lines prompt file.

    Returns:
        (accepted prompts in file order, refusals in file order).

    Raises:
        ValueError: The file is not UTF-8 or holds more than ``max_prompts`` prompts.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the prompt file is not UTF-8 ({exc})") from None
    lines = [(n, s) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]
    if len(lines) > max_prompts:
        raise ValueError(f"{len(lines)} prompts > limit {max_prompts} (setting AITASKS_CONTENT_MAX_PROMPTS)")
    accepted: list[ValidatedPrompt] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for n, line in lines:
        obj: Any = None
        try:
            obj = json.loads(line)
            rec = PromptRecord.model_validate(obj)
        except (json.JSONDecodeError, ValidationError, ValueError) as exc:
            pid = obj.get("id") if isinstance(obj, Mapping) else None
            name = pid if isinstance(pid, str) and re.match(ID_PATTERN, pid) else f"line-{n}"
            rejected.append(Rejection(name, n, "malformed", _short_error(exc)))
            continue
        if rec.id in seen:
            rejected.append(Rejection(rec.id, n, "duplicate_id", "the id is used by an earlier line", excerpt(rec)))
            continue
        seen.add(rec.id)
        ok, issues = check_prompt(rec, n, policy, blocked)
        if ok is not None:
            accepted.append(ok)
        rejected += issues
    return accepted, rejected


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ())) or '<record>'}: {e.get('msg')}" for e in exc.errors()
        )
    return re.sub(r"\s+", " ", str(exc))[:300]


def plan_batches(prompts: Sequence[ValidatedPrompt], batch_size: int) -> list[dict[str, Any]]:
    """Split accepted prompts into batches of one kind each, in file order: ``[{index, kind, ids}]``."""
    batches: list[dict[str, Any]] = []
    for kind in KINDS:
        ids = [p.record.id for p in prompts if p.record.kind == kind]
        for start in range(0, len(ids), batch_size):
            batches.append({"index": len(batches), "kind": kind, "ids": ids[start : start + batch_size]})
    return batches
