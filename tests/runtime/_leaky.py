"""A careless task (registered as ``test.leaky``) that puts a secret and a user id everywhere it can.

Used by the redaction tests: the secret reaches a log line, span attributes and events, an error
message (raw, base64, URL-safe base64, URL-encoded and hex) and a chained cause; the user id reaches
free-text logs, a span attribute and the error text.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from pydantic import SecretStr

from aitasks.runtime.errors import FatalError
from aitasks.runtime.task import TaskContext, TaskModel, ai_task


class LeakyParams(TaskModel):
    token: SecretStr
    user_id: str
    fail: bool = True


class LeakyResult(TaskModel):
    note: str


def encodings(secret: str) -> dict[str, str]:
    """Every form of ``secret`` a careless task or library may print."""
    raw = secret.encode()
    return {
        "raw": secret,
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "urlencoded": urllib.parse.quote(secret, safe=""),
        "hex": binascii.hexlify(raw).decode(),
        # Inside an HTTP basic-auth header: the secret's base64 starts mid-group.
        "basic": base64.b64encode(b"svc:" + raw).decode(),
    }


@ai_task(name="test.leaky", version="1.0.0")
def leaky_task(params: LeakyParams, ctx: TaskContext) -> LeakyResult:
    """Leak a secret and a user id.

    EN: Leaks its secret and user id into logs, spans and errors (a test of redaction).
    FR: Laisse fuir son secret et son identifiant utilisateur (test de la rédaction).
    DE: Lässt Geheimnis und Nutzerkennung durchsickern (Test der Schwärzung).
    """
    forms = encodings(params.token.get_secret_value())
    ctx.log.info(f"calling the service for {params.user_id} with {forms['raw']} / {forms['basic']}")
    ctx.span.set_attribute("http.request.header.authorization", f"Basic {forms['basic']}")
    ctx.span.set_attribute("debug.note", f"token={forms['urlencoded']} hex={forms['hex']} for {params.user_id}")
    ctx.span.add_event("call", {"url": f"https://svc.example/?t={forms['urlencoded']}&u={params.user_id}"})
    if not params.fail:
        return LeakyResult(note="ok")
    try:
        raise ValueError(f"inner: {forms['base64url']} for {params.user_id}")
    except ValueError as inner:
        raise FatalError(
            f"denied for {params.user_id}: token {forms['raw']} b64 {forms['base64']} "
            f"url {forms['urlencoded']} hex {forms['hex']} auth Basic {forms['basic']} [/x] [bold]"
        ) from inner
