"""The task framework.

Decorator and registry, errors, retries, idempotency, audit, telemetry, logging, storage, settings.
"""
