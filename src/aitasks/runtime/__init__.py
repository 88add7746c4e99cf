"""The task framework: decorator and registry, errors, retries, idempotency, audit, telemetry, logging, storage, settings."""
