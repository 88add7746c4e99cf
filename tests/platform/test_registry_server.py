"""The registry against a real ``mlflow server`` on PostgreSQL with proxied artifacts (integration).

One server per module (a fresh database ``aitasks_mlflow_<random>``, dropped afterwards); each test
uses its own model name and experiment so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aitasks.platform import registry as reg
from aitasks.platform.registry import (
    CHECKSUMS_TAG,
    KEY_TAG,
    RegistryConfig,
    download_model,
    get_version,
    promote_if_blessed,
    rollback_alias,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.hashing import sha256_file
from tests.fixtures import services
from tests.platform.test_registry import MODEL_FILES, make_model_dir, register

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Server:
    url: str
    artifacts: Path
    log: Path
    start_s: float


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``mlflow server`` (one uvicorn worker) on a fresh PostgreSQL database, artifacts proxied.

    The shared fixture waits as long as the machine's load needs and, when too slow, fails naming the
    phase that was (tests/fixtures/services.py).
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    with services.mlflow_server(root) as server:
        yield Server(url=server.url, artifacts=root / "artifacts", log=server.log, start_s=server.start.elapsed_s)


@pytest.fixture
def cfg(mlflow_server: Server, record_property: Any) -> RegistryConfig:
    """The server, with a model name and an experiment of this test's own."""
    record_property("mlflow_server_start_s", round(mlflow_server.start_s, 1))
    tag = uuid.uuid4().hex[:8]
    return RegistryConfig(tracking_uri=mlflow_server.url, model_name=f"reco-it-{tag}", experiment=f"reco-it-{tag}")


def _versions(cfg: RegistryConfig) -> list[int]:
    return sorted(int(mv.version) for mv in reg.client(cfg).search_model_versions(f"name = '{cfg.model_name}'"))


def _stored(server: Server, run_id: str, name: str) -> Path:
    [path] = list(server.artifacts.rglob(f"{run_id}/artifacts/model/{name}"))
    return path


# -------------------------------------------------------------------------------------------- tests


def test_register_is_idempotent_over_http(cfg: RegistryConfig, mlflow_server: Server, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m1")
    v1 = register(cfg, model_dir)
    assert v1.created and v1.version == 1
    assert v1.source.startswith("mlflow-artifacts:") and v1.source.endswith(f"{v1.run_id}/artifacts/model")
    assert v1.tags[KEY_TAG] == "key-1" and v1.tags["aitasks.data_snapshot"] == "snap-123"
    assert len(v1.tags[CHECKSUMS_TAG]) == 64

    again = register(cfg, model_dir)
    assert again == v1.model_copy(update={"created": False})
    assert _versions(cfg) == [1]

    c = reg.client(cfg)
    run = c.get_run(v1.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.05", "epochs": "3", "optimizer": "sparse"}
    assert run.data.metrics["recall_at_10"] == pytest.approx(0.31)
    history = c.get_metric_history(v1.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.5), (3, 2.25)]
    # The files went through the server's artifact proxy into --artifacts-destination.
    for name in (*MODEL_FILES, "checksums.json"):
        assert _stored(mlflow_server, v1.run_id, name).is_file()

    v2 = register(cfg, make_model_dir(tmp_path / "m2", seed=5), key="key-2")
    assert v2.created and v2.version == 2 and v2.run_id != v1.run_id
    assert _versions(cfg) == [1, 2]


def test_retry_after_a_crash_reuses_the_run_over_http(
    cfg: RegistryConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    model_dir = make_model_dir(tmp_path / "m")
    real = MlflowClient.create_model_version
    calls: list[str] = []

    def crash_once(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        calls.append("x")
        if len(calls) == 1:
            raise RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "registry restarting"})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", crash_once)
    with pytest.raises(ServiceUnavailableError):
        register(cfg, model_dir)
    v = register(cfg, model_dir)
    assert v.created and v.version == 1 and len(calls) == 2
    c = reg.client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.`{KEY_TAG}` = 'key-1'")
    assert [r.info.run_id for r in runs] == [v.run_id]
    assert _versions(cfg) == [1]


def test_aliases_promote_and_roll_back_over_http(cfg: RegistryConfig, tmp_path: Path) -> None:
    register(cfg, make_model_dir(tmp_path / "m1"))
    register(cfg, make_model_dir(tmp_path / "m2", seed=2), key="key-2")
    assert get_version(cfg, alias="champion") is None
    assert get_version(cfg, version=9) is None
    assert promote_if_blessed(cfg, 1, blessed=False) is False
    assert get_version(cfg, alias="champion") is None
    assert promote_if_blessed(cfg, 1, blessed=True) is True
    assert promote_if_blessed(cfg, 2, blessed=True) is True
    assert promote_if_blessed(cfg, 2, blessed=True) is False
    champion = get_version(cfg, alias="champion")
    assert champion is not None and champion.version == 2 and champion.aliases == ["champion"]
    assert champion.tags["aitasks.previous_champion"] == "1"

    assert rollback_alias(cfg) == 1
    champion = get_version(cfg, alias="champion")
    assert champion is not None and champion.version == 1
    assert promote_if_blessed(cfg, 2, blessed=True) is False  # demoted by the rollback
    with pytest.raises(InvalidInputError, match="no existing previous version"):
        rollback_alias(cfg)


def test_download_verifies_and_caches_over_http(
    cfg: RegistryConfig, mlflow_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    model_dir = make_model_dir(tmp_path / "m1")
    register(cfg, model_dir)
    v2 = register(cfg, make_model_dir(tmp_path / "m2", seed=5), key="key-2")
    assert promote_if_blessed(cfg, 1, blessed=True)

    got, local = download_model(cfg, alias="champion", dest=tmp_path / "dl")
    assert got.version == 1 and got.aliases == ["champion"] and local == tmp_path / "dl" / "model"
    for name in MODEL_FILES:
        assert (local / name).read_bytes() == (model_dir / name).read_bytes()
    assert json.loads((local / "checksums.json").read_text())["model.safetensors"] == sha256_file(
        model_dir / "model.safetensors"
    )

    def offline(*_: Any, **__: Any) -> None:
        raise AssertionError("a verified cache must not download again")

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "download_artifacts", offline)
        assert download_model(cfg, version=1, dest=tmp_path / "dl")[1] == local

    # Tampering in the server's artifact store is caught on the client, and nothing is left in dest.
    _stored(mlflow_server, v2.run_id, "model.json").write_text("{}")
    with pytest.raises(DataFormatError, match="sha256") as err:
        download_model(cfg, version=2, dest=tmp_path / "dl2")
    assert err.value.uri.endswith("model.json")
    assert not (tmp_path / "dl2" / "model").exists()
