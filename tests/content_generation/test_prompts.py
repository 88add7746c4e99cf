"""Prompt validation: each rule refuses with a clear error naming the prompt and the rule; the policy's parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.content_generation.policy import BlockedTerms, normalise, personal_data, redact
from aitasks.content_generation.prompts import (
    RULES,
    PromptPolicy,
    PromptRecord,
    check_prompt,
    parse_prompt_file,
    plan_batches,
    render_prompt,
)
from aitasks.runtime.errors import InvalidInputError
from tests.conftest import CapturedRuntime
from tests.content_generation.conftest import write_prompts

BLOCKED = BlockedTerms.build(default=True, extra=["forbidden phrase"])
POLICY = PromptPolicy(min_chars=3, max_chars=120)


def _rules(prompt: dict) -> list[str]:
    _, rejected = parse_prompt_file(json.dumps(prompt).encode(), POLICY, BLOCKED, max_prompts=10)
    return [r.rule for r in rejected]


@pytest.mark.parametrize(
    ("prompt", "rule"),
    [
        ({"id": "a", "kind": "image", "prompt": "hi"}, "length"),
        ({"id": "a", "kind": "image", "prompt": "x" * 121}, "length"),
        ({"id": "a", "kind": "image", "prompt": "cover\u202eart"}, "characters"),
        ({"id": "a", "kind": "image", "prompt": "cover\u200bart"}, "characters"),
        ({"id": "a", "kind": "image", "prompt": "cover\x07art"}, "characters"),
        ({"id": "a", "kind": "music", "prompt": "a Forbidden   Phrase song"}, "blocked_term"),
        ({"id": "a", "kind": "music", "prompt": "a n4z! march"}, "blocked_term"),
        ({"id": "a", "kind": "image", "prompt": "cover for mira@example.org"}, "personal_data"),
        ({"id": "a", "kind": "image", "prompt": "call +44 20 7946 0958 now"}, "personal_data"),
        ({"id": "a", "kind": "image", "prompt": "card 4111 1111 1111 1111"}, "personal_data"),
        ({"id": "a", "kind": "image", "prompt": "pay DE89 3704 0044 0532 0130 00"}, "personal_data"),
        ({"id": "a", "kind": "text", "template": "playlist_title", "metadata": {"genre": "jazz"}}, "missing_metadata"),
        (
            {"id": "a", "kind": "text", "template": "track_blurb", "metadata": {"title": "t", "artist": "me@x.io"}},
            "personal_data",
        ),
        ({"id": "a", "kind": "image", "template": "track_blurb", "prompt": "a cover"}, "malformed"),
        ({"id": "a b", "kind": "image", "prompt": "a cover"}, "malformed"),
        ({"id": "a", "kind": "video", "prompt": "a cover"}, "malformed"),
        ({"id": "a", "kind": "image", "prompt": "a cover", "extra": 1}, "malformed"),
    ],
)
def test_each_rule_refuses_its_prompt(prompt: dict, rule: str) -> None:
    assert rule in RULES
    assert rule in _rules(prompt)


def test_good_prompts_pass_and_templates_render_from_metadata() -> None:
    rec = PromptRecord.model_validate(
        {
            "id": "p1",
            "kind": "text",
            "template": "track_blurb",
            "metadata": {"title": "Blue Hour", "artist": "Mira Lane", "genre": "jazz", "year": 1999},
        }
    )
    assert render_prompt(rec) == "Track: Blue Hour by Mira Lane, jazz, 1999.\nBlurb:"
    ok, issues = check_prompt(rec, 1, POLICY, BLOCKED)
    assert ok is not None and not issues and ok.prompt_sha256 and ok.text.endswith("Blurb:")
    # Years, ranges, and words that contain a blocked term are not refused.
    for text in ("best of 1990-2000 rock", "songs from Nazareth", "Top 100 hits of 2024"):
        assert _rules({"id": "x", "kind": "music", "prompt": text}) == [], text


def test_file_errors_name_the_line_duplicates_and_invalid_json() -> None:
    raw = "\n".join(
        [
            json.dumps({"id": "p1", "kind": "image", "prompt": "a cover"}),
            json.dumps({"id": "p1", "kind": "image", "prompt": "another cover"}),
            "{not json",
            "",
            json.dumps({"id": "p2", "kind": "music", "prompt": "a loop"}),
        ]
    ).encode()
    accepted, rejected = parse_prompt_file(raw, POLICY, BLOCKED, max_prompts=10)
    assert [p.record.id for p in accepted] == ["p1", "p2"]
    assert [(r.prompt_id, r.line, r.rule) for r in rejected] == [("p1", 2, "duplicate_id"), ("line-3", 3, "malformed")]
    assert str(rejected[0]).startswith("prompt 'p1' (line 2): duplicate_id:")
    with pytest.raises(ValueError, match="AITASKS_CONTENT_MAX_PROMPTS"):
        parse_prompt_file(raw, POLICY, BLOCKED, max_prompts=2)


def test_batches_hold_one_kind_in_file_order() -> None:
    lines = [{"id": f"t{i}", "kind": "text", "prompt": f"text {i}"} for i in range(3)]
    lines += [{"id": f"i{i}", "kind": "image", "prompt": f"image {i}"} for i in range(2)]
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode()
    accepted, _ = parse_prompt_file(raw, POLICY, BLOCKED, max_prompts=10)
    assert plan_batches(accepted, 2) == [
        {"index": 0, "kind": "text", "ids": ["t0", "t1"]},
        {"index": 1, "kind": "text", "ids": ["t2"]},
        {"index": 2, "kind": "image", "ids": ["i0", "i1"]},
    ]


def test_validate_task_quarantines_with_redaction_or_fails_naming_prompt_and_rule(
    captured: CapturedRuntime, tmp_path: Path
) -> None:
    from aitasks.content_generation import validate_prompts_task
    from aitasks.runtime.bundle import open_bundle

    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [
            {"id": "ok-1", "kind": "image", "prompt": "a cover"},
            {"id": "pii-1", "kind": "image", "prompt": "cover for mira@example.org please"},
        ],
    )
    res = validate_prompts_task({"prompts_uri": prompts}, runtime=captured.rt)
    assert (res.accepted, res.rejected, res.rules, res.batches) == (1, 1, {"personal_data": 1}, [0])
    with open_bundle(res.prompts_uri, kind="content_prompts") as (folder, _):
        [row] = [json.loads(x) for x in (folder / "rejected.jsonl").read_text().splitlines()]
    assert row["id"] == "pii-1" and row["rule"] == "personal_data"
    assert "mira@example.org" not in json.dumps(row) and "[email]" in row["excerpt"]
    assert "mira@example.org" not in captured.log_text(), "personal data never reaches the logs"

    with pytest.raises(InvalidInputError, match=r"prompts\[pii-1\]: line 2: personal_data: prompt contains email"):
        validate_prompts_task({"prompts_uri": prompts, "on_invalid": "fail"}, runtime=captured.rt)
    only_bad = write_prompts(tmp_path / "bad.jsonl", [{"id": "x", "kind": "image", "prompt": "no"}])
    with pytest.raises(InvalidInputError, match=r"no prompt passed validation: prompt 'x' \(line 1\): length"):
        validate_prompts_task({"prompts_uri": only_bad}, runtime=captured.rt)


def test_validate_task_bounds_come_from_settings(tmp_path: Path) -> None:
    from aitasks.content_generation import validate_prompts_task
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.task import RunContext, Runtime
    from aitasks.runtime.telemetry import Telemetry

    rt = Runtime.create(
        Settings(storage_root=str(tmp_path / "store"), content_max_batch_size=2, content_max_prompt_chars=50),
        run=RunContext(run_id="r"),
        telemetry=Telemetry(),
    )
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "kind": "image", "prompt": "a cover"}])
    with pytest.raises(InvalidInputError) as err:
        validate_prompts_task({"prompts_uri": prompts, "batch_size": 3, "policy": {"max_chars": 60}}, runtime=rt)
    assert err.value.fields == ("batch_size", "policy.max_chars")
    assert "AITASKS_CONTENT_MAX_BATCH_SIZE" in str(err.value) and "AITASKS_CONTENT_MAX_PROMPT_CHARS" in str(err.value)


def test_blocked_terms_file_extends_the_list(captured: CapturedRuntime, tmp_path: Path) -> None:
    from aitasks.content_generation import validate_prompts_task

    terms = tmp_path / "terms.txt"
    terms.write_text("# house list\nlemon pie\n\n", "utf-8")
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [{"id": "a", "kind": "image", "prompt": "a cover"}, {"id": "b", "kind": "image", "prompt": "LEMON-pie art"}],
    )
    res = validate_prompts_task({"prompts_uri": prompts, "blocked_terms_uri": str(terms)}, runtime=captured.rt)
    assert res.rules == {"blocked_term": 1}


# -- properties -----------------------------------------------------------------------------------

_LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum()
)
_DOMAIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=10)
_FILLER = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "Zs", "P")), max_size=30)


@settings(max_examples=80, deadline=None)
@given(_FILLER, _LOCAL, _DOMAIN, _FILLER)
def test_redact_never_leaves_an_email(before: str, local: str, domain: str, after: str) -> None:
    email = f"{local}@{domain}.com"
    text = f"{before} {email} {after}"
    assert any(p.kind == "email" for p in personal_data(text))
    assert email not in redact(text)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60))
def test_normalise_is_idempotent_and_blocked_matching_survives_case_and_width(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    blocked = BlockedTerms(["lemon pie"])
    assert blocked.find(f"{text} LEMON PIE {text}") == ["lemon pie"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1000, max_value=2099), st.integers(min_value=1000, max_value=2099))
def test_years_and_ranges_are_never_phone_numbers(a: int, b: int) -> None:
    assert personal_data(f"hits from {a}-{b} and {a}") == []
