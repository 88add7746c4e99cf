"""The data contract pages (EN, FR, DE) stay in step with the code of the contract."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from aitasks.data_processing import etl
from aitasks.data_processing.contract import (
    CONTRACT_VERSION,
    EVENTS_SCHEMA,
    FUTURE_TOLERANCE_S,
    GENRE_AFFINITY_COLUMNS,
    GENRE_SLOTS,
    ID_PATTERN,
    MAX_CONTEXT_CHARS,
    MAX_DURATION_MS,
    MAX_GENRE_CHARS,
    MAX_MS_PLAYED,
    MAX_VOCABULARY,
    MIN_RELEASE_YEAR,
    QUARANTINE_EXTRA_COLUMNS,
    QUARANTINE_REASONS,
    TRACKS_SCHEMA,
)
from aitasks.data_processing.vocabulary import POLICY, VOCABULARY_FILE, fold

DOCS = Path(__file__).resolve().parents[2] / "docs"
LANGS = ("en", "fr", "de")


def _page(lang: str) -> str:
    return (DOCS / lang / "data-contract.md").read_text("utf-8")


def _table_types(text: str) -> dict[str, str]:
    """``column -> type`` from the rows of the column tables: ``| `col` | type | ...``."""
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", text, flags=re.M))


@pytest.mark.parametrize("lang", LANGS)
def test_every_column_is_documented_with_its_type(lang: str) -> None:
    text = _page(lang)
    types = _table_types(text)
    for schema in (EVENTS_SCHEMA, TRACKS_SCHEMA):
        for f in schema:
            assert f"`{f.name}`" in text, f"{lang}: column {f.name} missing"
            assert types.get(f.name) == str(f.type), f"{lang}: type of {f.name}"
    for extra in QUARANTINE_EXTRA_COLUMNS:
        assert f"`{extra}`" in text, f"{lang}: quarantine column {extra} missing"


@pytest.mark.parametrize("lang", LANGS)
def test_every_reason_code_is_documented_in_precedence_order(lang: str) -> None:
    text = _page(lang)
    for code in QUARANTINE_REASONS:
        assert f"`{code}`" in text, f"{lang}: reason code {code} missing"
    table = re.findall(r"^\| (\d+) \| `([a-z_:]+)` \|", text, flags=re.M)
    assert [code for _, code in table] == list(QUARANTINE_REASONS), f"{lang}: reason table out of step"
    assert [int(n) for n, _ in table] == list(range(1, len(QUARANTINE_REASONS) + 1))


@pytest.mark.parametrize("lang", LANGS)
def test_values_and_limits_are_documented(lang: str) -> None:
    text = _page(lang)
    assert f"**{CONTRACT_VERSION}**" in text
    assert ID_PATTERN in text
    for number in (MAX_MS_PLAYED, MAX_DURATION_MS):
        assert f"{number:,}".replace(",", " ") in text, f"{lang}: {number} missing"
    assert str(MIN_RELEASE_YEAR) in text
    assert f"now + {FUTURE_TOLERANCE_S} s" in text


def test_reason_codes_are_exported_where_the_ingest_uses_them() -> None:
    assert etl.QUARANTINE_REASONS is QUARANTINE_REASONS
    assert len(set(QUARANTINE_REASONS)) == len(QUARANTINE_REASONS)
    assert etl.QUARANTINE_SCHEMA.field("_source_row").type == pa.int64()


@pytest.mark.parametrize("lang", LANGS)
def test_open_vocabularies_are_documented(lang: str) -> None:
    """The shape rules, the normalisation policy with its examples, the slots and the artifact."""
    flat = " ".join(_page(lang).split())
    for number in (MAX_GENRE_CHARS, MAX_CONTEXT_CHARS, GENRE_SLOTS):
        assert f" {number} " in flat, f"{lang}: {number} missing"
    assert f"{MAX_VOCABULARY:,}".replace(",", " ") in flat
    assert f"`{POLICY}`" in flat and f"`{VOCABULARY_FILE}`" in flat
    for column in (GENRE_AFFINITY_COLUMNS[0], GENRE_AFFINITY_COLUMNS[GENRE_SLOTS - 1], GENRE_AFFINITY_COLUMNS[-1]):
        assert f"`{column}`" in flat, f"{lang}: {column} missing"
    # The page's folding examples are what the code does.
    for raw in ("Hip-Hop", "hip hop", "HipHop"):
        assert f"`{raw}`" in flat and fold(raw) == "hiphop"
    assert "`hiphop`" in flat
