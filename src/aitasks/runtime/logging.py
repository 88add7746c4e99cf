"""Structured JSON logs with trace id, task and run, and redaction of secrets and user identifiers.

Redaction happens in one processor that every record passes through:

* values of keys that name a secret (``password``, ``token``, ``secret``, ``api_key``, ...) and any
  ``SecretStr`` become ``[REDACTED]``;
* every secret value registered for the current task call (``register_secret``) is cut out of any
  string in the record, the message and exception text included, so a secret that leaks into an
  error message still never reaches the log;
* raw user identifiers (keys ``user_id``, ``user``, ``email``, ...) are replaced by a keyed
  pseudonym (HMAC-SHA256), stable within a deployment, so logs can still be correlated per user.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from pydantic import SecretStr

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential|authorization|private[_-]?key)", re.I)
_USER_KEYS = frozenset({"user_id", "user", "user_ids", "email", "listener_id", "ip", "ip_address"})

_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("aitasks_secrets", default=())
_pseudonym_key: list[bytes] = [b"aitasks-dev-only-key"]
_configured: list[bool] = [False]
_stream: list[Any] = [None]


def register_secret(value: str) -> contextvars.Token[tuple[str, ...]]:
    """Make ``value`` unloggable for the rest of the current context (task call)."""
    current = _secrets.get()
    return _secrets.set(current + ((value,) if len(value) >= 4 else ()))


def reset_secrets(token: contextvars.Token[tuple[str, ...]]) -> None:
    _secrets.reset(token)


def pseudonymize(value: object) -> str:
    """A stable keyed pseudonym for a user identifier (never reversible without the key)."""
    digest = hmac.new(_pseudonym_key[0], str(value).encode(), hashlib.sha256).hexdigest()
    return "u_" + digest[:16]


def _scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact(value: Any, *, key: str = "", secrets: tuple[str, ...] = ()) -> Any:
    """Redact one value of a log record or audit entry (recursively)."""
    if isinstance(value, SecretStr):
        return REDACTED
    if key and _SECRET_KEY.search(key):
        return REDACTED
    if key in _USER_KEYS and value is not None:
        if isinstance(value, list | tuple):
            return [pseudonymize(v) for v in value]
        return pseudonymize(value)
    if isinstance(value, Mapping):
        return {k: redact(v, key=str(k), secrets=secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets=secrets) for v in value]
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    return value


def _redaction_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    secrets = _secrets.get()
    return {k: redact(v, key=k if k != "event" else "", secrets=secrets) for k, v in event_dict.items()}


def _scrub_rendered(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Exception text is rendered after redaction of fields: scrub it once more.
    secrets = _secrets.get()
    if "exception" in event_dict and isinstance(event_dict["exception"], str):
        event_dict["exception"] = _scrub_text(event_dict["exception"], secrets)
    return event_dict


def configure_logging(
    level: str = "info", fmt: str = "json", pseudonymization_key: str | None = None, stream: Any = None
) -> None:
    """Configure structlog (called by the runtime, never at import time).

    ``stream`` defaults to the stream of the previous configuration, else stderr.
    """
    if stream is not None:
        _stream[0] = stream
    if pseudonymization_key:
        _pseudonym_key[0] = pseudonymization_key.encode()
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redaction_processor,
            structlog.processors.format_exc_info,
            _scrub_rendered,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_stream[0] or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured[0] = True


def get_logger(**bound: Any) -> Any:
    if not _configured[0]:
        configure_logging()
    return structlog.get_logger("aitasks").bind(**bound)
