"""Strict task inputs: JSON types are taken as they are, never coerced.

Task models validate in pydantic's lax mode, which turns ``"5"`` and ``true`` into the integer ``5`` and
``1``, or ``1`` and ``"yes"`` into ``True``. The task contract promises strict inputs: :func:`strict_issues`
names every field whose value is a number, a string or a boolean of the wrong JSON type. JSON has one
number type, so an integer for a float field and an integral float (``5.0``) for an integer field are
the same number: KFP hands every number over as a double (protobuf ``Struct``), ``kfp.local`` included.
Conversions JSON cannot avoid stay allowed too: an ISO string for a datetime or a date, a string for an
enum or a literal, a list for a tuple.

:func:`loads_json` reads the command line's JSON inputs without failing on an integer too long to
convert (Python refuses more than ``sys.get_int_max_str_digits()`` digits): the value becomes an
:class:`OversizedInt` that :func:`oversized_issues` reports under the field's name.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aitasks.runtime.errors import FieldIssue, InvalidInputError

M = TypeVar("M", bound=BaseModel)

#: Strict-mode error types of a scalar of the wrong JSON type.
_SCALAR_ERRORS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "string_type": "a string",
}


class OversizedInt:
    """An integer literal with more digits than Python converts (stands in for it until validation)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    return ""


def strict_issues(model: type[BaseModel], data: Mapping[str, Any]) -> list[FieldIssue]:
    """Fields of ``data`` whose scalar value has the wrong JSON type for ``model`` (lax mode would coerce it).

    Only values of JSON types count (str, bool, int, float): other Python objects (a numpy scalar, ...)
    are left to the model's own validation.
    """
    try:
        model.model_validate(dict(data), strict=True)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            wanted = _SCALAR_ERRORS.get(err["type"])
            value = err.get("input")
            got = _json_type(value)
            integral = isinstance(value, float) and value.is_integer() and err["type"] == "int_type"
            if wanted and got and not integral:
                loc = ".".join(str(x) for x in err.get("loc", ())) or "<input>"
                issues.append(FieldIssue(loc, f"must be {wanted}, got {got} (inputs are strict: no coercion)"))
        return issues
    return []


def _too_long(value: int) -> bool:
    limit = sys.get_int_max_str_digits()
    if limit <= 0 or value.bit_length() < limit * 3.32:
        return False
    try:
        str(value)
    except ValueError:
        return True
    return False


def oversized_issues(data: Any, path: str = "") -> list[FieldIssue]:
    """Integers too long to print or hash (their digits exceed Python's limit), named by field path."""
    issues: list[FieldIssue] = []
    if isinstance(data, OversizedInt):
        issues.append(FieldIssue(path or "<input>", f"integer out of range ({data.digits} digits)"))
    elif isinstance(data, int) and not isinstance(data, bool) and _too_long(data):
        limit = sys.get_int_max_str_digits()
        issues.append(FieldIssue(path or "<input>", f"integer out of range (over {limit} digits)"))
    elif isinstance(data, Mapping):
        for k, v in data.items():
            issues += oversized_issues(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            issues += oversized_issues(v, f"{path}.{i}" if path else str(i))
    return issues


def _parse_int(text: str) -> int | OversizedInt:
    digits = len(text.lstrip("+-"))
    limit = sys.get_int_max_str_digits()
    if limit and digits > limit:
        return OversizedInt(digits)
    return int(text)


def loads_json(text: str) -> Any:
    """``json.loads``, with integers too long to convert kept as :class:`OversizedInt`.

    Raises:
        json.JSONDecodeError: ``text`` is not JSON.
    """
    return json.loads(text, parse_int=_parse_int)


def _lax_issues(exc: ValidationError) -> list[FieldIssue]:
    return [
        FieldIssue(".".join(str(x) for x in err.get("loc", ())) or "<input>", str(err.get("msg", "invalid")))
        for err in exc.errors()
    ]


def validate_strict(task: str, model: type[M], data: Mapping[str, Any]) -> M:
    """``data`` validated by ``model``, strictly: every problem named by field in one :class:`InvalidInputError`."""
    huge = oversized_issues(data)
    if huge:
        raise InvalidInputError(task, huge)
    strict = strict_issues(model, data)
    try:
        validated = model.model_validate(dict(data))
    except ValidationError as exc:
        lax = _lax_issues(exc)
        named = {i.field for i in lax}
        raise InvalidInputError(task, [*lax, *(i for i in strict if i.field not in named)]) from None
    if strict:
        raise InvalidInputError(task, strict)
    return validated
