"""Redaction everywhere a value can leave the process (issue 14, findings 3 and 4).

A canary secret (in raw, base64, URL-safe base64, URL-encoded, hex and basic-auth forms) and a canary
user id are grepped across logs, the audit and every stored file, the exported spans (attributes,
status, exception events), and the stdout/stderr of a step process that dies of an uncaught exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aitasks.runtime import logging as rlog
from aitasks.runtime.errors import FatalError
from tests.conftest import CapturedRuntime
from tests.runtime._leaky import encodings, leaky_task

REPO = Path(__file__).resolve().parents[2]
SECRET = "CanarySecret-7f3a9c2e51d0"
USER = "listener-canary-4242"


def _leaks(text: str) -> list[str]:
    """The forms of the canary secret and the canary user id found in ``text``."""
    found = [f"secret:{name}" for name, form in encodings(SECRET).items() if form in text]
    return found + (["user_id"] if USER in text else [])


def _stored(root: Path) -> str:
    return "".join(p.read_text(errors="ignore") for p in root.rglob("*") if p.is_file())


def _spans(c: CapturedRuntime) -> str:
    return "\n".join(s.to_json() for s in c.spans.get_finished_spans())


def test_canary_secret_and_user_id_never_reach_logs_audit_or_spans(captured: CapturedRuntime) -> None:
    with pytest.raises(FatalError):
        leaky_task({"token": SECRET, "user_id": USER}, runtime=captured.rt)
    leaky_task({"token": SECRET, "user_id": USER, "fail": False}, runtime=captured.rt)
    logs, spans = captured.log_text(), _spans(captured)
    stored = _stored(Path(captured.settings.storage_root))
    assert "task.failed" in logs and "calling the service" in logs
    assert "exception" in spans and "denied for" in spans, "the span still records the (redacted) error"
    assert _leaks(logs) == []
    assert _leaks(stored) == [], "audit, idempotency failure records and work files"
    assert _leaks(spans) == [], "span attributes, status description and exception events"
    pseudonym = rlog.pseudonymize(USER)
    failed = [r for r in captured.rt.audit.records() if r["status"] == "failed"]
    assert failed and pseudonym in failed[-1]["error"]["message"], "user ids keep their keyed pseudonym"
    assert rlog.REDACTED in failed[-1]["error"]["message"]


def test_user_ids_are_pseudonymised_in_free_text() -> None:
    """Ids named as such in text, e-mail addresses, and ids the process has seen under a user key."""
    text = rlog.redact("no features for user 'u_000042'; user_id=alice-01, mail bob.smith@example.org")
    assert "u_000042" not in text and "alice-01" not in text and "bob.smith@example.org" not in text
    assert rlog.pseudonymize("u_000042") in text and rlog.pseudonymize("alice-01") in text
    assert rlog.redact(text) == text, "redaction is idempotent"
    assert rlog.redact("user features of 3 users") == "user features of 3 users", "plain words stay"
    assert "x9Q" not in rlog.redact("İstanbul USER_ID=x9Q"), "case-insensitive, non-ASCII text included"
    rlog.register_user_id("carol_77")
    assert rlog.redact("carol_77 skipped 3 tracks; carol_777 did not") == (
        f"{rlog.pseudonymize('carol_77')} skipped 3 tracks; carol_777 did not"
    )


def test_secret_encodings_and_url_credentials_are_redacted() -> None:
    token = rlog.register_secret(SECRET)
    try:
        for name, form in encodings(SECRET).items():
            assert form not in rlog.redact(f"x {form} y"), name
    finally:
        rlog.reset_secrets(token)
    # Remembered after the call for the process boundaries (a CLI error line, an uncaught traceback).
    assert SECRET not in rlog.scrub_text(f"late {SECRET}")
    assert "pw-9" not in rlog.redact("cannot reach postgresql://feast:pw-9@db:5432/registry")


def _step_script(extra: str = "") -> str:
    return (
        "import tests.runtime._leaky\n"
        "from aitasks.runtime.step import run_step\n"
        f"{extra}"
        f"run_step('test.leaky', {{'token': {SECRET!r}, 'user_id': {USER!r}}}, (None, 'leaky', 'run-7', 'leak'))\n"
    )


def test_uncaught_step_exception_prints_a_redacted_traceback(tmp_path: Path) -> None:
    """As in a KFP pod: the step dies of an uncaught exception; console spans go to stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "AITASKS_STORAGE_ROOT": str(tmp_path / "store"),
        "AITASKS_TRACE_EXPORTER": "console",
        "AITASKS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
    }
    out = subprocess.run(
        [sys.executable, "-c", _step_script()],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "FatalError: denied for" in out.stderr
    assert "ValueError: inner" in out.stderr, "the chained cause is shown, redacted"
    assert '"name": "task test.leaky"' in out.stdout, "console span exporter"
    assert _leaks(out.stderr) == [] and _leaks(out.stdout) == []
    assert _leaks(_stored(tmp_path / "store")) == []


def test_logging_records_from_libraries_are_redacted(captured: CapturedRuntime) -> None:
    """A stdlib logging handler (e.g. KFP's executor log) gets the redacted record too."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        rlog.configure_logging("info", "json", stream=captured.logs)
        token = rlog.register_secret(SECRET)
        try:
            raise RuntimeError(f"lib failed with {SECRET} for user_id={USER}")
        except RuntimeError:
            logging.getLogger("somelib").exception("call failed: %s", SECRET)
        finally:
            rlog.reset_secrets(token)
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "call failed" in text and "RuntimeError" in text
    assert _leaks(text) == []


def test_redacted_span_keeps_its_structure(captured: CapturedRuntime) -> None:
    leaky_task({"token": SECRET, "user_id": USER, "fail": False}, runtime=captured.rt)
    [span] = captured.spans.get_finished_spans()
    assert span.name == "task test.leaky" and span.attributes["aitasks.task"] == "test.leaky"
    assert span.attributes["http.request.header.authorization"] == rlog.REDACTED, "a key that names a secret"
    note = f"token={rlog.REDACTED} hex={rlog.REDACTED} for {rlog.pseudonymize(USER)}"
    assert span.attributes["debug.note"] == note
    assert json.loads(span.to_json())["events"][0]["name"] == "call"


@pytest.mark.parametrize("exporter", ["console", "otlp"])
def test_every_configured_exporter_sits_behind_the_redacting_one(exporter: str) -> None:
    from aitasks.runtime.telemetry import RedactingSpanExporter, Telemetry

    tel = Telemetry(exporter, otlp_endpoint="http://127.0.0.1:9/v1/traces")
    try:
        [processor] = tel.provider._active_span_processor._span_processors
        assert isinstance(processor.span_exporter, RedactingSpanExporter)  # type: ignore[attr-defined]
    finally:
        tel.shutdown()  # no span was made: nothing to send


def test_a_validation_message_about_the_user_field_stays_readable() -> None:
    """``user: must be ...`` names a field: its words are not taken for an id (the CLI's error line)."""
    from aitasks.runtime.logging import scrub_text

    text = "invalid input for task 'reco.recommend': user: must be 1-64 characters; user_id: is required"
    assert scrub_text(text) == text
    assert "abc42" not in scrub_text("user: abc42 failed")
