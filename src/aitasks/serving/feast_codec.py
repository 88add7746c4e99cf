"""Feast's Redis online-store encoding, without the Feast SDK (which takes 5-22 s to import).

What Feast 0.67 (``feast.infra.online_stores.redis``, ``entity_key_serialization_version: 3``) stores
per entity, and what this module writes and reads the same way:

* key: ``serialize_entity_key(EntityKey{join_keys: [k], entity_values: [Value{string_val: v}]})`` +
  ``project`` (UTF-8). For one string join key that is ``<I 1`` ``<I 2 (STRING)`` ``<I len(k)`` ``k``
  ``<I 2`` ``<I len(v)`` ``v`` (all little-endian ``uint32``);
* a hash with one field per feature, named by ``murmur3_32("<view>:<feature>")`` as 4 little-endian
  bytes, holding a serialized ``feast.types.Value`` (``int64_val`` = field 4 varint, ``float_val`` =
  field 6 fixed32, ``double_val`` = field 5 fixed64; a missing value is an empty message), plus the field
  ``_ts:<view>`` holding a serialized ``google.protobuf.Timestamp`` (seconds = 1, nanos = 2, varints).

``tests/serving/test_feast_parity.py`` holds this module to Feast's own ``get_online_features`` and
``online_write_batch``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, Literal

Dtype = Literal["Int64", "Float32", "Float64"]

_STRING: Final = 2  # feast ValueType.STRING
_TAG_INT64: Final = 0x20  # field 4, varint
_TAG_DOUBLE: Final = 0x29  # field 5, fixed64
_TAG_FLOAT: Final = 0x35  # field 6, fixed32
_TAG_SECONDS: Final = 0x08  # Timestamp.seconds, varint
_TAG_NANOS: Final = 0x10  # Timestamp.nanos, varint


def entity_key(project: str, join_key: str, value: str) -> bytes:
    """The Redis key Feast uses for the entity ``join_key = value`` (a string join key) in ``project``."""
    k, v = join_key.encode("utf-8"), value.encode("utf-8")
    return b"".join(
        (struct.pack("<III", 1, _STRING, len(k)), k, struct.pack("<II", _STRING, len(v)), v, project.encode("utf-8"))
    )


@lru_cache(maxsize=4096)
def field_key(view: str, feature: str) -> bytes:
    """The hash field of ``feature`` of ``view``: murmur3_32 (unsigned) of ``"view:feature"``, 4 LE bytes."""
    import mmh3

    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    """The hash field holding the row's event timestamp."""
    return f"_ts:{view}".encode()


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_value(dtype: Dtype, value: float | int | None) -> bytes:
    """A serialized ``feast.types.Value`` of ``value`` (empty message for None: read back as None)."""
    if value is None:
        return b""
    if dtype == "Int64":
        return bytes((_TAG_INT64,)) + _varint(int(value))
    if dtype == "Float32":
        return bytes((_TAG_FLOAT,)) + struct.pack("<f", float(value))
    return bytes((_TAG_DOUBLE,)) + struct.pack("<d", float(value))


def decode_value(raw: bytes | None) -> float | int | None:
    """The value of a serialized ``Value`` holding an int64, float or double (None: empty or absent).

    Raises:
        ValueError: Another value type, or a malformed message.
    """
    if not raw:
        return None
    tag = raw[0]
    if tag == _TAG_INT64:
        n, _ = _read_varint(raw, 1)
        return n - (1 << 64) if n >= 1 << 63 else n
    if tag == _TAG_FLOAT and len(raw) >= 5:
        return float(struct.unpack_from("<f", raw, 1)[0])
    if tag == _TAG_DOUBLE and len(raw) >= 9:
        return float(struct.unpack_from("<d", raw, 1)[0])
    raise ValueError(f"unsupported feast Value encoding (tag {tag:#x})")


def encode_ts(ts_us: int) -> bytes:
    """A serialized ``google.protobuf.Timestamp`` of ``ts_us`` (microseconds since the epoch, UTC)."""
    seconds, micros = divmod(int(ts_us), 1_000_000)
    out = b""
    if seconds:
        out += bytes((_TAG_SECONDS,)) + _varint(seconds)
    if micros:
        out += bytes((_TAG_NANOS,)) + _varint(micros * 1000)
    return out


def decode_ts(raw: bytes | None) -> int | None:
    """Microseconds since the epoch of a serialized ``Timestamp`` (None when absent)."""
    if raw is None:
        return None
    seconds = nanos = 0
    pos = 0
    while pos < len(raw):
        tag = raw[pos]
        value, pos = _read_varint(raw, pos + 1)
        if tag == _TAG_SECONDS:
            seconds = value
        elif tag == _TAG_NANOS:
            nanos = value
        else:
            raise ValueError(f"unexpected Timestamp field tag {tag:#x}")
    return seconds * 1_000_000 + nanos // 1000


def ts_datetime(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)


@lru_cache(maxsize=64)
def _row_fields(view: str, features: tuple[tuple[str, Dtype], ...]) -> tuple[tuple[str, Dtype, bytes], ...]:
    return tuple((name, dtype, field_key(view, name)) for name, dtype in features)


_F32 = struct.Struct("<f")
_FLOAT_TAG = bytes((_TAG_FLOAT,))


def encode_row(
    view: str, features: Sequence[tuple[str, Dtype]], values: Mapping[str, float | int | None], ts_us: int
) -> dict[bytes, bytes]:
    """The hash fields of one entity row of ``view``, as ``online_write_batch`` writes them."""
    out = {ts_field(view): encode_ts(ts_us)}
    for name, dtype, key in _row_fields(view, tuple(features)):
        v = values.get(name)
        # Float32 is most of a row: inlined.
        out[key] = _FLOAT_TAG + _F32.pack(v) if dtype == "Float32" and v is not None else encode_value(dtype, v)
    return out


def decode_row(
    view: str, features: Sequence[tuple[str, Dtype]], raw: Sequence[bytes | None]
) -> tuple[int | None, dict[str, float | int | None]] | None:
    """``(ts_us, values)`` of the reply to ``HMGET key <fields of features> _ts:<view>``; None: no row."""
    if all(r is None for r in raw):
        return None
    values = {name: decode_value(r) for (name, _), r in zip(features, raw, strict=False)}
    return decode_ts(raw[len(features)]), values


def read_fields(view: str, features: Sequence[tuple[str, Dtype]]) -> list[bytes]:
    """The fields to ``HMGET`` for :func:`decode_row`: every feature, then the timestamp."""
    return [*(field_key(view, n) for n, _ in features), ts_field(view)]


def serialized_entity_key(join_key: str, value: str) -> bytes:
    """``serialize_entity_key`` of one string join key (the sqlite online store's ``entity_key``)."""
    k, v = join_key.encode("utf-8"), value.encode("utf-8")
    return b"".join((struct.pack("<III", 1, _STRING, len(k)), k, struct.pack("<II", _STRING, len(v)), v))
