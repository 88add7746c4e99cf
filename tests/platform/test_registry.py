"""The MLflow registry on a throwaway sqlite store per test (the real server: test_registry_server.py)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from aitasks.platform import registry as reg
from aitasks.platform.registry import (
    CHECKSUMS_TAG,
    KEY_TAG,
    Lineage,
    RegistryConfig,
    download_model,
    get_version,
    model_params,
    promote,
    promote_if_blessed,
    register_and_promote,
    register_model,
    registration_key,
    registry_config,
    rollback_alias,
    set_alias,
)
from aitasks.platform.registry import config as reg_config
from aitasks.platform.registry import register as reg_register
from aitasks.runtime.errors import DataFormatError, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.hashing import sha256_file
from aitasks.runtime.settings import Settings

MODEL_FILES = ("model.safetensors", "model.json", "users.json", "items.json")


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A small model directory: real safetensors weights plus JSON config and vocabularies."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {"user_tower.weight": rng.standard_normal((4, 3)).astype(np.float32), "item_tower.bias": np.zeros(3, "f4")},
        str(path / "model.safetensors"),
    )
    (path / "model.json").write_text(json.dumps({"format": "aitasks.two_tower", "seed": seed}), "utf-8")
    (path / "users.json").write_text(json.dumps(["u0", "u1", "u2", "u3"]), "utf-8")
    (path / "items.json").write_text(json.dumps(["t0", "t1", "t2"]), "utf-8")
    return path


def register(cfg: RegistryConfig, model_dir: Path, key: str = "key-1", **kw: Any) -> reg.RegisteredVersion:
    args: dict[str, Any] = {
        "tags": {"aitasks.data_snapshot": "snap-123", "aitasks.kfp_run_id": "run-9"},
        "params": {"lr": 0.05, "epochs": 3, "optimizer": "sparse"},
        "metrics": {"recall_at_10": 0.31, "ndcg_at_10": 0.12},
        "curves": {"train_loss": [3.0, 2.5, 2.25]},
        "run_name": "train-run-9",
    }
    args.update(kw)
    return register_model(cfg, model_dir, idempotency_key=key, **args)


def local_source(source: str) -> Path:
    """The on-disk directory of a sqlite/local registry's model source."""
    return Path(source.removeprefix("file://"))


def registry_db(cfg: RegistryConfig) -> Path:
    return Path(cfg.tracking_uri.removeprefix("sqlite:///"))


@pytest.fixture
def cfg(tmp_path: Path) -> RegistryConfig:
    return registry_config(Settings(storage_root=str(tmp_path / "store")), model_name="reco-test")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


def runs_with_key(cfg: RegistryConfig, key: str, *, deleted: bool = False) -> list[Any]:
    from mlflow.entities import ViewType

    c = reg.client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    return list(c.search_runs([exp.experiment_id], f"tags.`{KEY_TAG}` = '{key}'", run_view_type=view))


# ----------------------------------------------------------------------------------- config


def test_registry_config_embedded_default_and_server(tmp_path: Path) -> None:
    cfg = registry_config(Settings(storage_root=str(tmp_path / "root")))
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}"
    assert cfg.artifact_location == str(tmp_path / "root" / "mlflow" / "artifacts")
    assert Path(cfg.artifact_location).is_dir() and cfg.model_name == "reco-two-tower"
    server = registry_config(Settings(storage_root="gs://b/p", mlflow_tracking_uri="http://u:secret@mlflow:5000"))
    assert server.tracking_uri == "http://u:secret@mlflow:5000" and server.artifact_location is None
    assert "secret" not in repr(server)
    assert reg.redact_uri(server.tracking_uri) == "http://***@mlflow:5000"


def test_registry_config_refuses_remote_root_without_server_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        registry_config(Settings(storage_root="gs://bucket/prefix"))
    assert "AITASKS_MLFLOW_TRACKING_URI" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        registry_config(Settings(storage_root=str(tmp_path)), model_name="bad/name")
    assert "model_name" in err.value.fields


# --------------------------------------------------------------------------------- register


def test_register_logs_lineage_params_metrics_curve_and_files(cfg: RegistryConfig, model_dir: Path) -> None:
    v = register(cfg, model_dir)
    assert v.created and v.version == 1 and v.name == "reco-test" and v.aliases == []
    assert v.tags["aitasks.data_snapshot"] == "snap-123" and v.tags["aitasks.kfp_run_id"] == "run-9"
    assert v.tags[KEY_TAG] == "key-1" and len(v.tags[CHECKSUMS_TAG]) == 64
    c = reg.client(cfg)
    run = c.get_run(v.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train-run-9"
    assert v.source == f"{run.info.artifact_uri}/model"
    assert run.data.params == {"lr": "0.05", "epochs": "3", "optimizer": "sparse"}
    assert run.data.metrics["recall_at_10"] == pytest.approx(0.31) and run.data.tags[KEY_TAG] == "key-1"
    history = c.get_metric_history(v.run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 3.0), (2, 2.5), (3, 2.25)]
    logged = {f.path for f in c.list_artifacts(v.run_id, "model")}
    assert logged == {f"model/{n}" for n in (*MODEL_FILES, "checksums.json")}
    assert get_version(cfg, version=1) == v.model_copy(update={"created": False})


def test_same_key_returns_the_version_and_a_new_key_makes_the_next(cfg: RegistryConfig, model_dir: Path) -> None:
    first = register(cfg, model_dir)
    again = register(cfg, model_dir, metrics={"recall_at_10": 0.99})
    assert again.version == first.version and again.created is False and again.run_id == first.run_id
    c = reg.client(cfg)
    assert len(c.search_model_versions("name = 'reco-test'")) == 1 and len(runs_with_key(cfg, "key-1")) == 1
    other = register(cfg, make_model_dir(model_dir.parent / "m2", seed=1), key="key-2")
    assert other.created and other.version == 2 and other.run_id != first.run_id


def test_retry_after_a_crash_reuses_the_finished_run_and_cleans_dead_ones(
    cfg: RegistryConfig, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    # A dead attempt with the same key (FAILED half-way) and a crash after the run was complete.
    register(cfg, make_model_dir(model_dir.parent / "other"), key="warm-up")  # creates the experiment
    c = reg.client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    dead = c.create_run(exp.experiment_id, tags={KEY_TAG: "key-1"}).info.run_id
    c.set_terminated(dead, "FAILED")

    real_create = MlflowClient.create_model_version
    real_upload = MlflowClient.log_artifacts
    creates: list[str] = []
    uploads: list[str] = []

    def crash_once(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        creates.append(args[0])
        if len(creates) == 1:  # the process "dies" after the run, before the version
            raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return real_create(self, *args, **kwargs)

    def counting_upload(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        uploads.append(args[0])
        return real_upload(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", crash_once)
    monkeypatch.setattr(MlflowClient, "log_artifacts", counting_upload)
    with pytest.raises(ServiceUnavailableError):
        register(cfg, model_dir)
    [complete] = [r for r in runs_with_key(cfg, "key-1") if r.info.status == "FINISHED"]
    assert not reg_register._find_by_key(c, cfg.model_name, "key-1")
    v = register(cfg, model_dir)
    assert v.created and v.version == 2 and v.run_id == complete.info.run_id
    assert len(creates) == 2 and uploads == [complete.info.run_id]  # the retry uploaded nothing
    assert [r.info.run_id for r in runs_with_key(cfg, "key-1")] == [complete.info.run_id]
    assert [int(mv.version) for mv in reg_register._find_by_key(c, cfg.model_name, "key-1")] == [2]
    assert c.get_run(dead).info.lifecycle_stage == "deleted"
    assert register(cfg, model_dir) == v.model_copy(update={"created": False})
    assert len(creates) == 2


def test_racing_registrations_agree_on_the_lowest_version(
    cfg: RegistryConfig, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = register(cfg, model_dir)
    real = reg_register._find_by_key
    lookups: list[tuple[Any, ...]] = []

    def racing(*a: Any) -> Any:
        lookups.append(a)
        return [] if len(lookups) == 1 else real(*a)  # the racer's first lookup ran before ``first`` existed

    monkeypatch.setattr(reg_register, "_find_by_key", racing)
    loser = register(cfg, model_dir)
    assert loser.version == first.version and loser.created is False
    assert [int(mv.version) for mv in reg.client(cfg).search_model_versions("name = 'reco-test'")] == [1]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"key": "it's"}, "idempotency_key"),
        ({"tags": {KEY_TAG: "x"}}, f"tags.{KEY_TAG}"),
        ({"tags": {"bad\nkey": "x"}}, "tags.bad\nkey"),
        ({"metrics": {"recall": float("nan")}}, "metrics.recall"),
        ({"metrics": {"loss": 1.0}, "curves": {"loss": [1.0]}}, "curves.loss"),
    ],
)
def test_invalid_registration_inputs_fail_before_any_run(
    cfg: RegistryConfig, model_dir: Path, kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as err:
        register(cfg, model_dir, **kw)
    assert field in err.value.fields
    assert not registry_db(cfg).exists()  # refused before any MLflow call


def test_pickle_files_symlinks_and_empty_dirs_are_refused(cfg: RegistryConfig, model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "extra.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataFormatError, match="refusing pickle-based file") as err:
        register(cfg, model_dir)
    assert err.value.uri.endswith("extra.pkl")
    (model_dir / "extra.pkl").unlink()
    (model_dir / "weights.pt.gz").write_bytes(b"x")
    with pytest.raises(DataFormatError, match="pickle"):
        register(cfg, model_dir)
    (model_dir / "weights.pt.gz").unlink()
    (model_dir / "link.json").symlink_to(tmp_path / "outside.json")
    (tmp_path / "outside.json").write_text("{}")
    with pytest.raises(DataFormatError, match="symbolic link"):
        register(cfg, model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no files"):
        register(cfg, tmp_path / "empty")
    assert not registry_db(cfg).exists()


def test_log_batches_respect_mlflow_limits(cfg: RegistryConfig, model_dir: Path) -> None:
    batches = list(reg_register._batches(list(range(250)), list(range(1900))))  # type: ignore[arg-type]
    assert all(len(p) <= 100 and len(p) + len(m) <= 1000 for p, m in batches)
    assert [x for p, _ in batches for x in p] == list(range(250))
    assert [x for _, m in batches for x in m] == list(range(1900))
    v = register(
        cfg, model_dir, params={f"p{i}": i for i in range(130)}, metrics={f"m{i}": float(i) for i in range(950)}
    )
    data = reg.client(cfg).get_run(v.run_id).data
    assert len(data.params) == 130 and len(data.metrics) == 951  # + train_loss


# -------------------------------------------------------------------------------- aliases


def test_alias_moves_only_when_blessed_and_rolls_back(cfg: RegistryConfig, model_dir: Path) -> None:
    assert get_version(cfg, alias="champion") is None
    register(cfg, model_dir)
    register(cfg, make_model_dir(model_dir.parent / "m2", seed=2), key="key-2")
    assert promote_if_blessed(cfg, 1, blessed=False) is False
    assert get_version(cfg, alias="champion") is None
    assert promote_if_blessed(cfg, 1, blessed=True) is True
    assert promote_if_blessed(cfg, 1, blessed=True) is False  # already there
    assert promote_if_blessed(cfg, 2, blessed=False) is False
    champion = get_version(cfg, alias="champion")
    assert champion is not None and champion.version == 1 and champion.aliases == ["champion"]
    assert promote_if_blessed(cfg, 2, blessed=True) is True
    v2 = get_version(cfg, version=2)
    assert v2 is not None and v2.aliases == ["champion"] and v2.tags["aitasks.previous_champion"] == "1"

    assert rollback_alias(cfg) == 1
    champion = get_version(cfg, alias="champion")
    assert champion is not None and champion.version == 1
    # The rolled-back version is not promoted again by a re-run; a deliberate set_alias can.
    assert promote_if_blessed(cfg, 2, blessed=True) is False
    set_alias(cfg, "champion", 2)
    v2 = get_version(cfg, version=2)
    assert v2 is not None and v2.aliases == ["champion"] and "aitasks.demoted_champion" not in v2.tags
    assert rollback_alias(cfg) == 1
    with pytest.raises(InvalidInputError, match="no existing previous version"):
        rollback_alias(cfg)  # v1 never had a predecessor


def test_lookup_errors(cfg: RegistryConfig, model_dir: Path) -> None:
    assert get_version(cfg, version=1) is None  # no model yet
    register(cfg, model_dir)
    assert get_version(cfg, version=7) is None
    assert get_version(cfg, alias="champion") is None  # the model exists, the alias does not
    with pytest.raises(InvalidInputError):
        get_version(cfg)
    with pytest.raises(InvalidInputError):
        get_version(cfg, version=1, alias="champion")
    with pytest.raises(InvalidInputError):
        promote_if_blessed(cfg, 7, blessed=True)
    with pytest.raises(InvalidInputError):
        set_alias(cfg, "v3", 1)  # reserved by MLflow
    with pytest.raises(InvalidInputError, match="no alias"):
        rollback_alias(cfg, alias="staging")


# -------------------------------------------------------------------------------- download


def test_download_verifies_and_caches(
    cfg: RegistryConfig, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    register(cfg, model_dir)
    promote_if_blessed(cfg, 1, blessed=True)
    v, local = download_model(cfg, alias="champion", dest=tmp_path / "cache")
    assert v.version == 1 and local == tmp_path / "cache" / "model"
    for name in MODEL_FILES:
        assert (local / name).read_bytes() == (model_dir / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "cache")) == ["model"]  # no staging left behind

    def offline(*_: Any, **__: Any) -> None:
        raise AssertionError("a verified cache must not download again")

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "download_artifacts", offline)
        assert download_model(cfg, version=1, dest=tmp_path / "cache")[1] == local
    (local / "users.json").write_text("[]")  # a damaged cache is replaced
    _, local = download_model(cfg, version=1, dest=tmp_path / "cache")
    assert (local / "users.json").read_bytes() == (model_dir / "users.json").read_bytes()
    with pytest.raises(InvalidInputError):
        download_model(cfg, version=9, dest=tmp_path / "nine")


def test_download_refuses_tampered_and_pickle_artifacts(cfg: RegistryConfig, model_dir: Path, tmp_path: Path) -> None:
    v = register(cfg, model_dir)
    stored = local_source(v.source)
    original = (stored / "model.safetensors").read_bytes()
    (stored / "model.safetensors").write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(DataFormatError, match="sha256") as err:
        download_model(cfg, version=1, dest=tmp_path / "a")
    assert err.value.uri.endswith("model.safetensors")
    assert not (tmp_path / "a" / "model").exists()

    # Rewriting checksums.json to match does not help: its hash is a tag in the registry database.
    listing = json.loads((stored / "checksums.json").read_text())
    listing["model.safetensors"] = sha256_file(stored / "model.safetensors")
    (stored / "checksums.json").write_text(json.dumps(listing))
    with pytest.raises(DataFormatError, match=CHECKSUMS_TAG) as err:
        download_model(cfg, version=1, dest=tmp_path / "b")
    assert err.value.uri.endswith("checksums.json")

    (stored / "model.safetensors").write_bytes(original)
    (stored / "checksums.json").unlink()
    with pytest.raises(DataFormatError, match=r"checksums\.json"):
        download_model(cfg, version=1, dest=tmp_path / "c")

    v2 = register(cfg, make_model_dir(tmp_path / "m2", seed=3), key="key-2")
    (local_source(v2.source) / "head.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataFormatError, match="refusing pickle-based file") as err:
        download_model(cfg, version=2, dest=tmp_path / "d")
    assert err.value.uri.endswith("head.pkl")


def test_download_refuses_a_copy_altered_in_transit(
    cfg: RegistryConfig, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    register(cfg, model_dir)
    real = MlflowClient.download_artifacts

    def tampering(self: MlflowClient, run_id: str, path: str, dst_path: str | None = None) -> str:
        out = real(self, run_id, path, dst_path)
        (Path(out) / "items.json").write_text('["evil"]')
        return out

    monkeypatch.setattr(MlflowClient, "download_artifacts", tampering)
    with pytest.raises(DataFormatError, match="sha256 does not match") as err:
        download_model(cfg, version=1, dest=tmp_path / "dl")
    assert err.value.uri == "reco-test v1/items.json"
    assert os.listdir(tmp_path / "dl") == []  # the staging copy is gone, no model/ appeared


def test_file_uri_artifact_location_round_trip(tmp_path: Path) -> None:
    cfg = RegistryConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_location=(tmp_path / "art").as_uri(),
        model_name="reco-file-uri",
    )
    model_dir = make_model_dir(tmp_path / "m")
    v = register(cfg, model_dir)
    assert v.created and v.source.startswith((tmp_path / "art").as_uri())
    assert (tmp_path / "art" / v.run_id / "artifacts" / "model" / "model.safetensors").is_file()
    _, local = download_model(cfg, version=v.version, dest=tmp_path / "dl")
    assert (local / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_registry_turns_mlflow_pickle_loading_off(
    cfg: RegistryConfig, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    assert get_version(cfg, version=1) is None
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False


def test_download_refuses_versions_without_checksums_tag(cfg: RegistryConfig, model_dir: Path, tmp_path: Path) -> None:
    v = register(cfg, model_dir)
    c = reg.client(cfg)
    c.create_model_version(cfg.model_name, v.source, run_id=v.run_id)  # made outside aitasks
    with pytest.raises(DataFormatError, match="not registered by aitasks"):
        download_model(cfg, version=2, dest=tmp_path / "x")


# ------------------------------------------------------------------------- unreachable server


def test_unreachable_server_is_retryable_and_hides_credentials(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = RegistryConfig(tracking_uri="http://user:secret@127.0.0.1:1", model_name="reco-test")
    for call in (
        lambda: get_version(cfg, alias="champion"),
        lambda: register(cfg, model_dir),
        lambda: promote_if_blessed(cfg, 1, blessed=True),
    ):
        with pytest.raises(ServiceUnavailableError) as err:
            call()
        message = str(err.value)
        assert err.value.retryable and "127.0.0.1:1" in message
        assert "secret" not in message and err.value.__cause__ is None and err.value.__suppress_context__


def test_transient_error_classification() -> None:
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    def chained(outer: Exception, inner: Exception) -> Exception:
        try:
            raise inner
        except Exception:
            try:
                raise outer  # implicit __context__, as MLflow's REST client does
            except Exception as exc:
                return exc
        raise AssertionError("unreachable")

    transient = [
        RestException({"error_code": "INTERNAL_ERROR", "message": "server fell over"}),
        MlflowException("API request to endpoint /x failed with error code 503 != 200. Response body: ''"),
        MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),
        chained(MlflowException("API request to http://h failed with exception ..."), requests.ConnectionError()),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        TimeoutError(),
    ]
    permanent = [
        MlflowException("a client-side bug"),  # INTERNAL_ERROR by default, but no server said so
        MlflowException("Registered Model with name=x not found", error_code=RESOURCE_DOES_NOT_EXIST),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}),
        ValueError("x"),
    ]
    assert all(reg_config.is_transient(e) for e in transient)
    assert not any(reg_config.is_transient(e) for e in permanent)


# -------------------------------------------------------------------- register and promote


def _lineage(model_sha: str) -> Lineage:
    return Lineage(
        code_version="model.train@1.0.0",
        git_revision="abc123",
        trace_id="0" * 32,
        kfp_run_id="run-7",
        pipeline="reco-training",
        submitter="pytest",
        model_sha=model_sha,
    )


def test_register_and_promote_tags_lineage_and_keys_the_version_by_content(
    cfg: RegistryConfig, model_dir: Path
) -> None:
    first = register_and_promote(
        cfg,
        model_dir,
        lineage=_lineage("sha-a"),
        tags={"aitasks.labels": "a,b"},
        params={"lr": 0.1},
        metrics={"accuracy": 0.9},
        run_name="x" * 300,
    )
    assert first.version.created and first.promotion is None and not first.promoted
    tags = first.version.tags
    assert tags[KEY_TAG] == registration_key(cfg.model_name, "sha-a")
    assert tags["aitasks.model_sha"] == "sha-a" and tags["aitasks.kfp_run_id"] == "run-7"
    assert tags["aitasks.code_version"] == "model.train@1.0.0" and tags["aitasks.labels"] == "a,b"
    assert get_version(cfg, alias="champion") is None  # blessed=None registers only
    # Another call with other lineage (a re-evaluation, another run) but the same content: same version.
    again = register_and_promote(
        cfg, model_dir, lineage=_lineage("sha-a").model_copy(update={"kfp_run_id": "r8"}), metrics={}
    )
    assert not again.version.created and again.version.version == first.version.version


def test_one_policy_a_rolled_back_version_is_not_promoted_again_by_re_registering(
    cfg: RegistryConfig, model_dir: Path
) -> None:
    second_dir = make_model_dir(model_dir.parent / "m2", seed=2)
    v1 = register_and_promote(cfg, model_dir, lineage=_lineage("sha-1"), metrics={"accuracy": 0.8}, blessed=True)
    assert v1.promotion is not None and v1.promotion.outcome == "moved" and v1.promoted
    again = register_and_promote(cfg, model_dir, lineage=_lineage("sha-1"), metrics={"accuracy": 0.8}, blessed=True)
    assert again.promotion is not None and again.promotion.outcome == "already" and again.promoted
    v2 = register_and_promote(cfg, second_dir, lineage=_lineage("sha-2"), metrics={"accuracy": 0.9}, blessed=True)
    assert v2.promoted and v2.version.version == 2

    assert rollback_alias(cfg) == 1
    redo = register_and_promote(cfg, second_dir, lineage=_lineage("sha-2"), metrics={"accuracy": 0.9}, blessed=True)
    assert redo.version.version == 2 and not redo.version.created
    assert redo.promotion is not None and redo.promotion.outcome == "demoted" and not redo.promoted
    champion = get_version(cfg, alias="champion")
    assert champion is not None and champion.version == 1, "the rollback's ban must hold"

    not_blessed = register_and_promote(cfg, model_dir, lineage=_lineage("sha-1"), metrics={}, blessed=False)
    assert not_blessed.promotion is not None and not_blessed.promotion.outcome == "not_blessed"
    # promote_if_blessed (the recommender's model.promote) is the same policy.
    assert promote_if_blessed(cfg, 2, blessed=True) is False
    # Only a deliberate human move lifts the ban.
    set_alias(cfg, "champion", 2)
    assert promote(cfg, 2, blessed=True).outcome == "already"


def test_model_params_keeps_scalars_only() -> None:
    meta = {"params": {"lr": 0.1, "epochs": 3, "device": "cpu", "labels": ["a", "b"], "extra": None}}
    assert model_params(meta) == {"lr": 0.1, "epochs": 3, "device": "cpu"}
    assert model_params({}) == {}


def test_embedded_registry_writes_only_under_the_storage_root(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``./mlruns`` in the working directory: runs, artifacts and the database live under the root."""
    from aitasks.runtime.settings import Settings

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = reg.registry_config(Settings(storage_root=str(tmp_path / "root")), model_name="reco-test")
    v = register(cfg, model_dir)
    assert list(cwd.iterdir()) == [], f"written to the working directory: {list(cwd.iterdir())}"
    assert local_source(v.source).is_relative_to(tmp_path / "root" / "mlflow")
