"""The aitasks-settings ConfigMap against the Settings model and the compiled steps.

Every compiled step reads aitasks-settings (optional key refs) and the Secret aitasks-step-secrets as
env. Here each step's environment is built from the compiled YAML and the rendered ConfigMap (plus
stand-in Secret values), and resolved through aitasks.runtime.settings.Settings: in prod it must pass
the production guard (AITASKS_ENV=production refuses every embedded default).
"""

from __future__ import annotations

from typing import Any

import pytest

from aitasks.runtime.settings import Settings
from tests.manifests._k8s import OVERLAYS, RUNS_OVERLAYS, env_of, find, render, render_runs
from tests.manifests.test_runs import executors

#: Stand-ins for the keys of the Secret aitasks-step-secrets (created outside git; docs/en/install.md).
#: A key the compiled steps read but this table lacks fails the test: document it, then add it here.
SECRET_VALUES = {
    "pseudonymization-key": "0123456789abcdef0123456789abcdef",
    "redis-url": "redis://:s3cr3t@feast-redis.aitasks:6379/0",
    "feast-registry": "postgresql://feast:s3cr3t@10.20.0.5:5432/feast",
    "tuning-storage": "postgresql://optuna:s3cr3t@10.20.0.6:5432/optuna",
    "audit-key": "fedcba9876543210fedcba9876543210",
}


def settings_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "aitasks-settings")["data"])


def step_environment(spec: dict[str, Any], config_map: dict[str, str]) -> dict[str, str]:
    """The env a step pod gets: optional ConfigMap key refs, then the Secret's keys."""
    env: dict[str, str] = {}
    for ref in spec.get("configMapAsEnv", []):
        for k in ref["keyToEnv"]:
            if k["configMapKey"] in config_map:
                env[k["envVar"]] = config_map[k["configMapKey"]]
    for ref in spec.get("secretAsEnv", []):
        for k in ref["keyToEnv"]:
            assert k["secretKey"] in SECRET_VALUES, f"undocumented Secret key {k['secretKey']!r}"
            env[k["envVar"]] = SECRET_VALUES[k["secretKey"]]
    return env


def resolve(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a pod with exactly ``env`` would load them (this process's AITASKS_* removed)."""
    import os

    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("AITASKS_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings()


def test_keys_are_settings_and_never_secrets(runs_docs: list[dict[str, Any]]) -> None:
    data = settings_data(runs_docs)
    fields = {f"AITASKS_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, f"not a setting: {set(data) - fields}"
    secret_env = {k["envVar"] for spec in executors().values() for r in spec["secretAsEnv"] for k in r["keyToEnv"]}
    assert {"AITASKS_REDIS_URL", "AITASKS_PSEUDONYMIZATION_KEY"} <= secret_env
    assert not set(data) & secret_env, "a Secret's key in the ConfigMap: the Secret's value must be the only one"
    # Every key is one the compiled steps read (a key no step maps is silently ignored).
    mapped = {k["configMapKey"] for spec in executors().values() for r in spec["configMapAsEnv"] for k in r["keyToEnv"]}
    assert set(data) <= mapped, f"steps do not read {set(data) - mapped}"


def test_both_namespaces_read_the_same_settings() -> None:
    for runs in RUNS_OVERLAYS:
        env = env_of(runs)
        assert env in OVERLAYS
        assert settings_data(render_runs(runs)) == settings_data(render(env)), runs


def test_dev_is_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    for runs in [o for o in RUNS_OVERLAYS if env_of(o) == "dev"]:
        data = settings_data(render_runs(runs))
        assert data["AITASKS_ENV"] == "dev"
        assert data["AITASKS_STORAGE_ROOT"].startswith("gs://aitasks-dev-")


def test_every_prod_step_passes_the_production_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    prod = [o for o in RUNS_OVERLAYS if env_of(o) == "prod"]
    assert prod
    for runs in prod:
        data = settings_data(render_runs(runs))
        for name, spec in executors().items():
            settings = resolve(step_environment(spec, data), monkeypatch)
            assert settings.env == "production", (runs, name)
            assert settings.production_problems() == [], (runs, name)
            assert "prod" in settings.storage_root and "prod" in settings.resolved_audit_root()


def test_the_guard_would_catch_a_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has teeth: a prod ConfigMap without the Pushgateway URL fails it."""
    data = settings_data(render_runs("standalone/prod"))
    data.pop("AITASKS_PUSHGATEWAY_URL")
    spec = next(iter(executors().values()))
    problems = resolve(step_environment(spec, data), monkeypatch).production_problems()
    assert any("PUSHGATEWAY" in p for p in problems)


def test_the_feast_apply_job_passes_the_production_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job in `aitasks` runs the same runtime: in prod it needs the same settings and Secret keys."""
    docs = render("prod")
    job = find(docs, "Job", "feast-apply")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env |= find(docs, "ConfigMap", src["configMapRef"]["name"])["data"]
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "aitasks-step-secrets", e
            env[e["name"]] = SECRET_VALUES[ref["key"]]
        elif "value" in e:
            env[e["name"]] = e["value"]
    env = {k: v for k, v in env.items() if k.startswith("AITASKS_")}
    settings = resolve(env, monkeypatch)
    assert settings.env == "production"
    assert settings.production_problems() == []
