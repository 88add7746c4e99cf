"""Settings: the production guard refuses every embedded default with one line naming each."""

from __future__ import annotations

import pytest

from aitasks.runtime.errors import ConfigurationError
from aitasks.runtime.settings import Settings
from aitasks.runtime.task import Runtime

PROD = {
    "env": "production",
    "storage_root": "gs://aitasks-prod/runs",
    "mlflow_tracking_uri": "http://mlflow.aitasks:5000",
    "pseudonymization_key": "k-" + "x" * 30,
    "audit_key": "a-" + "y" * 30,
    "pushgateway_url": "http://prometheus-pushgateway.monitoring:9091",
    "feast_online_store": "redis",
    "redis_url": "redis://:pw@feast-redis.aitasks:6379/0",
    "feast_registry": "postgresql://feast:pw@10.20.0.5:5432/feast",
}


def test_complete_production_settings_pass() -> None:
    s = Settings(**PROD)  # type: ignore[arg-type]
    assert s.production_problems() == []
    s.check_production()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"storage_root": ".aitasks"}, "AITASKS_STORAGE_ROOT"),
        ({"audit_root": "/var/audit"}, "AITASKS_AUDIT_ROOT"),
        ({"mlflow_tracking_uri": ""}, "AITASKS_MLFLOW_TRACKING_URI"),
        ({"mlflow_tracking_uri": "sqlite:///x.db"}, "AITASKS_MLFLOW_TRACKING_URI"),
        ({"pseudonymization_key": "aitasks-dev-only-key"}, "AITASKS_PSEUDONYMIZATION_KEY"),
        ({"audit_key": "aitasks-dev-only-audit-key"}, "AITASKS_AUDIT_KEY"),
        ({"audit_key": ""}, "AITASKS_AUDIT_KEY"),
        ({"audit_key": "short"}, "AITASKS_AUDIT_KEY"),
        ({"audit_head_root": "/var/audit-head"}, "AITASKS_AUDIT_HEAD_ROOT"),
        ({"pushgateway_url": ""}, "AITASKS_PUSHGATEWAY_URL"),
        ({"feast_online_store": "sqlite"}, "AITASKS_FEAST_ONLINE_STORE"),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, "AITASKS_REDIS_URL"),
        ({"feast_registry": ""}, "AITASKS_FEAST_REGISTRY"),
        ({"feast_registry": "gs://aitasks-prod/feast/registry.db"}, "AITASKS_FEAST_REGISTRY"),
    ],
)
def test_each_embedded_default_is_refused_by_name(override: dict, named: str) -> None:
    s = Settings(**{**PROD, **override})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as ei:
        s.check_production()
    message = str(ei.value)
    assert named in message and "\n" not in message
    assert not ei.value.retryable


def test_all_defaults_are_listed_at_once_and_no_secret_is_echoed() -> None:
    s = Settings(env="production", redis_url="redis://:hunter2@127.0.0.1:6379/0")  # type: ignore[call-arg]
    problems = s.production_problems()
    assert len(problems) >= 5
    assert "hunter2" not in " ".join(problems)


def test_dev_settings_are_not_checked() -> None:
    Settings().check_production()


def test_a_production_runtime_refuses_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("AITASKS_ENV", "production")
    monkeypatch.setenv("AITASKS_STORAGE_ROOT", str(tmp_path))
    with pytest.raises(ConfigurationError, match="AITASKS_STORAGE_ROOT"):
        Runtime.create()


def test_a_production_step_refuses_to_start_before_running_the_task(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from aitasks.runtime.step import run_step

    monkeypatch.setenv("AITASKS_ENV", "production")
    with pytest.raises(ConfigurationError, match="production settings at embedded defaults"):
        run_step("run.summary", {"run_id": "r"}, ({"storage_root": str(tmp_path)}, "p", "r", "s"))
    assert not (tmp_path / "audit").exists(), "nothing was written"


@pytest.mark.parametrize(
    ("task_name", "params", "missing"),
    [
        ("data.source", {}, "events_uri/catalog_uri"),
        ("audio.source", {"catalog_root": "", "labelled_root": ""}, "catalog_root"),
    ],
)
def test_production_does_not_generate_synthetic_data_in_place_of_a_missing_location(
    tmp_path, task_name: str, params: dict, missing: str
) -> None:
    """A production schedule without its data location fails with the parameter named, writing nothing.

    The runtime is a dev one (local disk) carrying complete production settings: the task's own guard is
    what is under test, not the start-up guard.
    """
    import dataclasses

    from aitasks.runtime.task import get_task

    local = {**PROD, "storage_root": str(tmp_path / "store")}
    rt = Runtime.create(Settings(storage_root=local["storage_root"]))
    prod = dataclasses.replace(rt, settings=Settings(**local))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=f"{missing} is empty: a production run does not generate"):
        get_task(task_name)(params, runtime=prod)
    assert not list((tmp_path / "store").rglob("*.parquet")), "nothing generated"
    assert not list((tmp_path / "store").rglob("*.wav")), "nothing generated"

    staging = dataclasses.replace(rt, settings=Settings(**local, allow_synthetic_data=True))  # type: ignore[arg-type]
    if task_name == "data.source":  # a staging run may: the generator runs (small, to stay fast)
        out = get_task(task_name)(
            {"synthetic": {"seed": 1, "users": 20, "tracks": 30, "events": 400, "days": 3}}, runtime=staging
        )
        assert out.synthetic
