"""The content policy shared by prompt validation and output checks: blocked terms, personal data, characters.

* :class:`BlockedTerms` matches whole words after normalisation (NFKC, case folding, accents dropped,
  common digit/symbol substitutions undone, punctuation read as spaces), so ``N4Z!``, ``Nazi`` and
  ``ｎａｚｉ`` all match the term ``nazi`` while ``Nazareth`` does not. Terms of several words match as a
  phrase. The default list (:data:`DEFAULT_BLOCKED_TERMS`) is a small baseline; a deployment adds its
  own list (a text file, one term per line, ``#`` comments) and may switch the default off.
* :func:`personal_data` finds e-mail addresses, phone numbers, payment card numbers (Luhn-checked) and
  IBANs (mod-97-checked). Phone numbers need 9 to 15 digits (or a leading ``+``/``00``), so years and
  ranges such as ``1990-2000`` are not phone numbers. :func:`redact` replaces every match with its
  kind (``[email]``), so a quarantine record can show the prompt without the personal data.
* :func:`bad_characters` finds control, format (zero-width, bidirectional overrides), private-use,
  surrogate and unassigned code points: invisible text that hides what a prompt says.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_BLOCKED_TERMS",
    "BlockedTerms",
    "PersonalData",
    "bad_characters",
    "normalise",
    "parse_terms",
    "personal_data",
    "redact",
]

#: The baseline list of terms no prompt or output may contain (extend it per deployment).
DEFAULT_BLOCKED_TERMS: Final[tuple[str, ...]] = (
    "nazi",
    "hitler",
    "white power",
    "porn",
    "pornographic",
    "rape",
    "child abuse",
    "self harm",
    "beheading",
    "terrorist attack",
    "cocaine",
    "heroin",
)

# Substitutions used to dodge word lists (applied after case folding).
_LEET: Final = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_NON_WORD: Final = re.compile(r"[^0-9a-z]+")


def normalise(text: str, *, leet: bool = True) -> str:
    """``text`` as the word matcher sees it: NFKC, case-folded, no accents, words joined by single spaces."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    if leet:
        plain = plain.translate(_LEET)
    return _NON_WORD.sub(" ", plain).strip()


def parse_terms(text: str) -> tuple[str, ...]:
    """Terms of a blocked-terms file: one per line, blank lines and ``#`` comments ignored, deduplicated."""
    out: dict[str, None] = {}
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip()
        if term:
            out[term] = None
    return tuple(out)


class BlockedTerms:
    """A list of blocked terms, matched as whole words or phrases (see the module docstring)."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms: tuple[str, ...] = tuple(dict.fromkeys(t for t in terms if normalise(t, leet=False)))
        # Each term is matched in both spellings of the text: plain and with substitutions undone.
        self._norm = {t: normalise(t, leet=False) for t in self.terms}

    def __len__(self) -> int:
        return len(self.terms)

    def find(self, text: str) -> list[str]:
        """The blocked terms ``text`` contains, in list order."""
        if not self.terms:
            return []
        spellings = {f" {normalise(text, leet=False)} ", f" {normalise(text)} "}
        return [t for t, n in self._norm.items() if any(f" {n} " in s for s in spellings)]

    @classmethod
    def build(cls, *, default: bool, extra: Iterable[str] = ()) -> BlockedTerms:
        """The default list (when ``default``) plus ``extra`` terms."""
        return cls([*(DEFAULT_BLOCKED_TERMS if default else ()), *extra])


@dataclass(frozen=True)
class PersonalData:
    """One personal-data match: its kind (``email``, ``phone``, ``payment_card``, ``iban``) and span."""

    kind: str
    start: int
    end: int


_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digits with spaces, dots, dashes, slashes or brackets between them; the digit count decides below.
_DIGITS: Final = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d(?:[\s./()-]{0,2}\d){6,22}(?!\w)")
_IBAN: Final = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def personal_data(text: str) -> list[PersonalData]:
    """Every e-mail address, phone number, payment card number and IBAN in ``text`` (by position)."""
    found: list[PersonalData] = [PersonalData("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
    found += [PersonalData("iban", m.start(), m.end()) for m in _IBAN.finditer(text) if _iban_ok(m.group())]
    for m in _DIGITS.finditer(text):
        if any(p.start <= m.start() < p.end for p in found):
            continue  # digits inside an e-mail address or an IBAN
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        international = raw.startswith(("+", "00"))
        if 13 <= len(digits) <= 19 and _luhn(digits) and not international:
            found.append(PersonalData("payment_card", m.start(), m.end()))
        elif 9 <= len(digits) <= 15 or (international and 8 <= len(digits) <= 15):
            found.append(PersonalData("phone", m.start(), m.end()))
    return sorted(found, key=lambda p: p.start)


def redact(text: str) -> str:
    """``text`` with every personal-data match replaced by ``[kind]``."""
    out, pos = [], 0
    for p in personal_data(text):
        if p.start < pos:
            continue
        out += [text[pos : p.start], f"[{p.kind}]"]
        pos = p.end
    return "".join([*out, text[pos:]])


#: Unicode categories refused: control, format (zero-width, bidi), private use, surrogate, unassigned.
_BAD_CATEGORIES: Final = {"Cc", "Cf", "Co", "Cs", "Cn"}


def bad_characters(text: str, *, allow: str = "") -> list[tuple[int, str]]:
    """``(position, description)`` of each refused code point of ``text`` (``allow``: characters let through)."""
    out = []
    for i, ch in enumerate(text):
        if ch in allow:
            continue
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            name = unicodedata.name(ch, "unnamed")
            out.append((i, f"U+{ord(ch):04X} ({name})"))
    return out
