"""Structured JSON logs with trace id, task and run, and redaction of secrets and user identifiers.

Redaction is one function, :func:`scrub_text` (and :func:`redact` for structured values), applied
wherever a value can leave the process: every structlog record, every stdlib ``logging`` record (a
library's or KFP's own log), the audit's error text, exported spans (``telemetry``), the CLI's error
line and any uncaught traceback (:func:`install_excepthook`, installed by the CLI and the step adapter).

* values of keys that name a secret (``password``, ``token``, ``secret``, ``api_key``, ...) and any
  ``SecretStr`` become ``[REDACTED]``;
* every secret value registered for a task call (``register_secret``: its ``SecretStr`` inputs) or by
  the runtime (``register_settings``: the settings' secrets, passwords inside service URLs) is cut out
  of any text, together with its encodings (base64 and URL-safe base64 at any byte offset, so inside a
  basic-auth header too; URL-encoded; hex; JSON-escaped). Secrets are also remembered for the rest of
  the process (bounded), so an exception printed after its call ended is still scrubbed;
* URL credentials (``scheme://user:password@``), ``password=...``-style pairs and ``Bearer``/``Basic``
  credentials are redacted even when nobody registered them;
* user identifiers become a keyed pseudonym (HMAC-SHA256, ``u_`` + 16 hex), stable within a deployment
  so logs can still be correlated per user: values under keys such as ``user_id``, ``email``; any
  occurrence in text of an id seen under such a key or registered (``register_user_id``, the task
  inputs named like user ids); ids named as such in text (``user_id=abc``, ``user 'abc'``); e-mail
  addresses. An id nobody named or registered cannot be told apart from any other word
  (the data contract's id rule is ``^[A-Za-z0-9_-]{1,64}$``).
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import json
import logging
import re
import sys
import threading
import traceback
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog
from pydantic import SecretStr

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential|authorization|private[_-]?key)", re.I)
_USER_KEYS = frozenset({"user_id", "user", "user_ids", "email", "listener_id", "ip", "ip_address"})
#: Shorter secrets and user ids are not scrubbed out of text (they would match ordinary words).
_MIN_SECRET = 4
_MIN_USER_ID = 4
#: How many secrets / user ids a process remembers (oldest dropped first).
_REMEMBER_SECRETS = 256
_REMEMBER_USER_IDS = 8192

_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("aitasks_secrets", default=())
_pseudonym_key: list[bytes] = [b"aitasks-dev-only-key"]
_configured: list[bool] = [False]
_stream: list[Any] = [None]


class _Remembered:
    """A bounded, thread-safe, insertion-ordered set of strings (oldest dropped first), with a change count."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()
        self._snapshot: tuple[str, ...] | None = ()
        self.version = 0

    def add(self, value: str) -> None:
        if value in self._items:
            return
        with self._lock:
            self._items[value] = None
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
            self._snapshot = None
            self.version += 1

    def __contains__(self, value: str) -> bool:
        return value in self._items

    def __bool__(self) -> bool:
        return bool(self._items)

    def values(self) -> tuple[str, ...]:
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                snapshot = self._snapshot = tuple(self._items)
        return snapshot


_remembered_secrets = _Remembered(_REMEMBER_SECRETS)
#: Registered user ids made of id characters (looked up per token of a text), and any others (a pattern).
_user_ids = _Remembered(_REMEMBER_USER_IDS)
_odd_user_ids = _Remembered(256)


def register_secret(value: str) -> contextvars.Token[tuple[str, ...]]:
    """Make ``value`` unloggable for the rest of the current context (task call), and remember it."""
    current = _secrets.get()
    if len(value) >= _MIN_SECRET:
        _remembered_secrets.add(value)
        return _secrets.set((*current, value))
    return _secrets.set(current)


def reset_secrets(token: contextvars.Token[tuple[str, ...]]) -> None:
    _secrets.reset(token)


def register_settings(settings: Any) -> None:
    """Remember the secrets of a settings object: its ``SecretStr`` values, passwords inside its URLs."""
    from aitasks.runtime.settings import DEV_AUDIT_KEY, DEV_PSEUDONYMIZATION_KEY

    public = {DEV_AUDIT_KEY, DEV_PSEUDONYMIZATION_KEY}
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if len(secret) >= _MIN_SECRET and secret not in public:
                _remembered_secrets.add(secret)
            value = secret
        if isinstance(value, str) and "://" in value:
            password = _url_password(value)
            if password and len(password) >= _MIN_SECRET:
                _remembered_secrets.add(password)


def _url_password(url: str) -> str | None:
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def register_user_id(value: object) -> None:
    """Pseudonymise ``value`` wherever it appears in text from now on (this process)."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value)
        if len(text) >= _MIN_USER_ID and not _PSEUDONYM.fullmatch(text):
            (_user_ids if _ID_TOKEN.fullmatch(text) else _odd_user_ids).add(text)


def register_user_fields(values: Mapping[str, Any]) -> None:
    """Register every value under a user key (``user_id``, ``email``, ...) of ``values``, recursively."""
    for k, v in values.items():
        if str(k) in _USER_KEYS:
            for item in v if isinstance(v, list | tuple) else (v,):
                register_user_id(item)
        elif isinstance(v, Mapping):
            register_user_fields(v)


def pseudonymize(value: object) -> str:
    """A stable keyed pseudonym for a user identifier (never reversible without the key)."""
    digest = hmac.new(_pseudonym_key[0], str(value).encode(), hashlib.sha256).hexdigest()
    return "u_" + digest[:16]


# -- secrets in text ---------------------------------------------------------------------------
def _b64_cores(raw: bytes, alphabet: bytes | None) -> list[str]:
    """The base64 characters that only ``raw`` determines, at each of the 3 byte offsets it may start at.

    Inside a longer encoded value (``Basic base64(user:secret)``) the secret starts mid-group: the
    characters shared with the bytes around it differ, the ones in between do not.
    """
    out = []
    for offset, head in ((0, 0), (1, 2), (2, 3)):
        enc = base64.b64encode(b"\0" * offset + raw, altchars=alphabet).decode().rstrip("=")
        tail = 1 if (offset + len(raw)) % 3 else 0
        core = enc[head : len(enc) - tail]
        if len(core) >= 6:
            out.append(core)
    return out


@functools.lru_cache(maxsize=4096)
def _secret_forms(secret: str) -> tuple[str, ...]:
    """``secret`` and the encodings a library or a careless task may print it in."""
    raw = secret.encode()
    forms = {secret, raw.hex(), raw.hex().upper(), json.dumps(secret)[1:-1]}
    for quoted in (urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
        forms.add(quoted)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted))
    full = base64.b64encode(raw).decode()
    forms.update({full, full.rstrip("="), full.replace("+", "-").replace("/", "_").rstrip("=")})
    forms.update(_b64_cores(raw, None))
    forms.update(_b64_cores(raw, b"-_"))
    return tuple(f for f in forms if len(f) >= _MIN_SECRET)


@functools.lru_cache(maxsize=64)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    forms = sorted({f for s in secrets for f in _secret_forms(s)}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, forms))) if forms else None


_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@'\"]*):(?!\[REDACTED\]@)[^/\s@'\"]+@")
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key")
# Case-insensitive patterns are written in lower case and run on the lower-cased text (see ``_fold_sub``).
_SECRET_PAIR = re.compile(
    r"(?P<key>password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
    r"(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?!\[redacted\])[^\s'\",;&)\]}]+"
)
_AUTH_HEADER = re.compile(r"\b(?P<scheme>bearer|basic)\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,}")


def _scrub_secrets(text: str, secrets: tuple[str, ...]) -> str:
    pattern = _secrets_pattern(secrets)
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    lower = text.lower()
    if any(w in lower for w in _SECRET_WORDS):
        text = _fold_sub(_SECRET_PAIR, text, lambda g: f"{g('key')}{g('sep')}{REDACTED}")
    if "bearer" in lower or "basic" in lower:
        text = _fold_sub(_AUTH_HEADER, text, lambda g: f"{g('scheme')} {REDACTED}")
    return text


@functools.lru_cache(maxsize=16)
def _ignorecase(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(pattern.pattern, re.IGNORECASE)


def _fold_sub(pattern: re.Pattern[str], text: str, repl: Callable[[Callable[[str], str]], str]) -> str:
    """``pattern.sub`` ignoring case; ``repl`` reads groups of the original text through its argument.

    Searching the lower-cased text with a case-sensitive pattern is several times faster than
    ``re.IGNORECASE`` (which disables the engine's first-character scan); where lower-casing changes the
    text's length (a few non-ASCII letters), the slow pattern runs instead.
    """
    lower = text.lower()
    if len(lower) != len(text):
        return _ignorecase(pattern).sub(lambda m: repl(m.group), text)
    out, last = [], 0
    for m in pattern.finditer(lower):

        def group(name: str, m: re.Match[str] = m) -> str:
            return text[m.start(name) : m.end(name)]

        out += [text[last : m.start()], repl(group)]
        last = m.end()
    return "".join(out) + text[last:] if out else text


# -- user ids in text --------------------------------------------------------------------------
_PSEUDONYM = re.compile(r"u_[0-9a-f]{16}")
_ID_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_ID = r"[A-Za-z0-9_-]{1,64}"
# ``user_id=abc``, ``user: abc``, ``"user_id": "abc"``: a user key, ``=`` or ``:``, the id.
# Not the words of a validation message: ``user: must be 1-64 characters`` names a field, not an id.
_MESSAGE_WORDS = (
    r"(?!(?:must|is|are|not|should|has|have|needs?|missing|required|invalid|expected|cannot|unknown"
    r"|empty|none|null|a|an|the)(?![\w-]))"
)
_USER_PAIR = re.compile(
    r"\b(?P<key>user|user_?ids?|listener_?id|uid)(?P<sep>['\"]?\s*[=:]\s*['\"]?)"
    + _MESSAGE_WORDS
    + r"(?P<id>"
    + _ID
    + r")(?![\w-])"
)
# ``user 'abc'``, ``user_id "abc"``: a user key followed by a quoted id.
_USER_QUOTED = re.compile(r"\b(?P<key>user|user_?id|listener_?id)(?P<sep>\s+)(?P<q>['\"])(?P<id>" + _ID + r")(?P=q)")
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


@functools.lru_cache(maxsize=4)
def _odd_user_pattern(version: int) -> re.Pattern[str] | None:
    """A pattern of the registered ids that are not plain id tokens (rare: rebuilt when they change)."""
    odd = sorted(_odd_user_ids.values(), key=len, reverse=True)
    if not odd:
        return None
    return re.compile(r"(?<![A-Za-z0-9_-])(?:" + "|".join(map(re.escape, odd)) + r")(?![A-Za-z0-9_-])")


def _pseudonym_of(value: str) -> str:
    return value if _PSEUDONYM.fullmatch(value) or value == REDACTED else pseudonymize(value)


def _scrub_user_ids(text: str) -> str:
    odd = _odd_user_pattern(_odd_user_ids.version)
    if odd is not None:
        text = odd.sub(lambda m: pseudonymize(m.group(0)), text)
    if _user_ids and any(token in _user_ids for token in _ID_TOKEN.findall(text)):
        text = _ID_TOKEN.sub(lambda m: pseudonymize(m.group(0)) if m.group(0) in _user_ids else m.group(0), text)
    lower = text.lower()
    if "user" in lower or "listener" in lower or "uid" in lower:
        text = _fold_sub(_USER_PAIR, text, lambda g: g("key") + g("sep") + _pseudonym_of(g("id")))
        text = _fold_sub(_USER_QUOTED, text, lambda g: g("key") + g("sep") + g("q") + _pseudonym_of(g("id")) + g("q"))
    if "@" in text:
        text = _EMAIL.sub(lambda m: pseudonymize(m.group(0)), text)
    return text


def _all_secrets(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    known = _remembered_secrets.values()
    current = tuple(s for s in (*_secrets.get(), *extra) if s not in known and len(s) >= _MIN_SECRET)
    return known + current if current else known


def scrub_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without any known secret (or its encodings, or credentials) and with user ids pseudonymised."""
    return _scrub_user_ids(_scrub_secrets(text, _all_secrets(secrets)))


def _leaf(key: str) -> str:
    """The last part of a dotted key (``http.request.user_id`` -> ``user_id``)."""
    return key.rsplit(".", 1)[-1]


def redact(value: Any, *, key: str = "", secrets: tuple[str, ...] = ()) -> Any:
    """Redact one value of a log record, audit entry or span attribute (recursively)."""
    if isinstance(value, SecretStr):
        return REDACTED
    if key and _SECRET_KEY.search(key):
        return REDACTED
    if _leaf(key) in _USER_KEYS and value is not None:
        if isinstance(value, list | tuple):
            return [_pseudonym_of(str(v)) for v in value]
        return _pseudonym_of(str(value))
    if isinstance(value, Mapping):
        return {k: redact(v, key=str(k), secrets=secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets=secrets) for v in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value


# -- exceptions --------------------------------------------------------------------------------
def error_summary(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, redacted: one line for a person (a CLI error, a step's last words)."""
    text = str(exc)
    return scrub_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def format_exception(exc: BaseException) -> str:
    """The full traceback of ``exc`` (chained causes and contexts included), redacted."""
    return scrub_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(scrub_text(text))
    sys.stderr.flush()


def _thread_excepthook(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    name = getattr(args.thread, "name", "?")
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(scrub_text(f"Exception in thread {name}:\n{text}"))
    sys.stderr.flush()


def install_excepthook() -> None:
    """Print uncaught exceptions (main thread and other threads) as a redacted traceback.

    The step adapter and the CLI install it: a step that dies (a KFP pod's last words) or a command
    run with ``--debug`` never prints a secret or a raw user id, chained exceptions included.
    """
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


# -- stdlib logging ----------------------------------------------------------------------------
_base_factory: list[Any] = []


def _redacting_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _base_factory[0](*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: let logging report it as usual
        return record
    record.msg, record.args = scrub_text(message), None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = scrub_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = scrub_text(record.stack_info)
    return record


def _redact_stdlib_logging() -> None:
    """Scrub every stdlib ``logging`` record at creation (libraries, KFP's executor), whatever its handler."""
    if not _base_factory:
        _base_factory.append(logging.getLogRecordFactory())
        logging.setLogRecordFactory(_redacting_record_factory)


# -- structlog ---------------------------------------------------------------------------------
def _redaction_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    # Ids under user keys first: the same id in this record's free text is then pseudonymised too.
    register_user_fields(event_dict)
    return {k: redact(v, key=k if k != "event" else "") for k, v in event_dict.items()}


def _scrub_rendered(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Exception text is rendered after redaction of fields: scrub it once more.
    if "exception" in event_dict and isinstance(event_dict["exception"], str):
        event_dict["exception"] = scrub_text(event_dict["exception"])
    return event_dict


def configure_logging(
    level: str = "info", fmt: str = "json", pseudonymization_key: str | None = None, stream: Any = None
) -> None:
    """Configure structlog and the redaction of stdlib logging (called by the runtime, never at import time).

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
    _redact_stdlib_logging()
    _configured[0] = True


def get_logger(**bound: Any) -> Any:
    if not _configured[0]:
        configure_logging()
    return structlog.get_logger("aitasks").bind(**bound)
