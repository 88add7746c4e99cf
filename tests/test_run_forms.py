"""Run-form groups: strict dicts of related knobs, derived from the inputs of the tasks they feed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter

from aitasks.run_forms import GROUPS, form_issues, group, step_params
from aitasks.runtime.errors import InvalidInputError
from aitasks.runtime.task import get_task


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_every_key_routes_to_a_real_input_and_its_default_is_valid_there(name: str) -> None:
    """A key routed to several tasks (``data.lookback_days`` is also the drift's ``warmup_days``) must be
    a valid input of each; the defaults are what the pipelines chose."""
    g = GROUPS[name]
    default = g.default()
    assert list(default) == list(g.keys)
    for task, mapping in g.routes.items():
        fields = get_task(task).params_model.model_fields
        for key, field in mapping.items():
            assert field in fields, f"{name}.{key} -> {task}.{field}: no such input"
            info = fields[field]
            adapter: TypeAdapter[Any] = TypeAdapter(
                Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            )
            adapter.validate_python(default[key])
        assert step_params(task, {}, **{name: {}}) == {f: default[k] for k, f in mapping.items()}


def test_an_unknown_key_and_a_wrong_value_are_named_as_group_keys() -> None:
    with pytest.raises(InvalidInputError) as info:
        step_params("model.train", {}, training={"epoch": 3, "lr": -1.0, "device": "tpu"})
    err = info.value
    assert err.task == "model.train"
    assert set(err.fields) == {"training.epoch", "training.lr", "training.device"}
    text = str(err)
    assert "training.epoch: unknown key; known: epochs, batch_size" in text
    assert "(got -1.0)" in text and "(got 'tpu')" in text


def test_json_types_are_strict_but_kfp_doubles_are_integers() -> None:
    """KFP hands numbers inside dict parameters over as doubles: 2.0 is the integer 2; "2" is not."""
    got = step_params("data.drift", {"features_uri": "f"}, data={"lookback_days": 7.0, "psi_threshold": 1})
    assert got == {"features_uri": "f", "warmup_days": 7, "psi_threshold": 1.0, "ks_pvalue_threshold": 0.01}
    assert isinstance(got["warmup_days"], int)
    with pytest.raises(InvalidInputError, match=r"data\.lookback_days: must be an integer, got a string"):
        step_params("data.drift", {}, data={"lookback_days": "7"})
    with pytest.raises(InvalidInputError, match=r"training\.logq_correction: must be a boolean"):
        step_params("model.train", {}, training={"logq_correction": 1})
    with pytest.raises(InvalidInputError, match=r"data\.lookback_days"):
        step_params("data.drift", {}, data={"lookback_days": 7.5})


def test_a_group_given_in_part_keeps_the_other_defaults_and_routes_renamed_keys() -> None:
    got = step_params("audio.register_classifier", {"model_uri": "m"}, classifier={"name": "genre-v2", "epochs": 3})
    assert got == {"model_uri": "m", "model_name": "genre-v2", "min_accuracy": 0.6}, "epochs is train_classifier's"
    assert step_params("audio.train_classifier", {}, classifier={"epochs": 3}) == {
        "backend": "torch",
        "epochs": 3,
        "clip_seconds": 4.0,
        "seed": 0,
    }


def test_every_task_input_a_group_sets_passes_the_task_s_own_validation() -> None:
    """Non-default training settings reach model.train's input model unchanged (the old flat parameters' test)."""
    from aitasks.model_training.tasks import TrainParams

    chosen = {
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.01,
        "sparse_lr": 0.1,
        "seed": 9,
        "embedding_dim": 16,
        "id_dim": 8,
        "hidden_dim": 32,
        "temperature": 0.1,
        "logq_correction": False,
        "device": "cpu",
        "average_epochs": 1,
        "checkpoints_per_epoch": 1,
        "lr_decay": "none",
        "holdout_days": 2,
    }
    params = step_params("model.train", {"training_set_uri": "gs://b/ts/MANIFEST.json"}, training=chosen)
    validated = TrainParams.model_validate(params)
    for key, value in chosen.items():
        if key != "holdout_days":
            assert getattr(validated, key) == value, key
    assert "holdout_days" not in params
    assert step_params("reco.training_set", {}, training=chosen)["holdout_days"] == 2


def test_a_group_is_a_dict_and_feeds_only_its_tasks() -> None:
    with pytest.raises(InvalidInputError, match="gate: must be a JSON object"):
        step_params("model.evaluate", {}, gate=None)
    with pytest.raises(InvalidInputError, match=r"gate: must be a JSON object \(dict\), got list"):
        step_params("model.evaluate", {}, gate=[1])
    with pytest.raises(KeyError, match=r"feeds no input of task 'model\.train'"):
        step_params("model.train", {}, gate={})
    with pytest.raises(KeyError, match="no run-form group 'trainin'"):
        group("trainin")


def test_form_issues_check_every_group_of_a_run_before_it_starts() -> None:
    issues = form_issues(
        {"training": {"epochs": 0}, "index": {"backend": "faiss"}, "events_uri": "x", "synthetic": {"users": -1}}
    )
    assert [i.field for i in issues] == ["training.epochs", "index.backend"], "synthetic is the source task's"
    assert form_issues({"training": {"epochs": 2}, "feast": {"online_store": "redis"}}) == []


def test_run_step_refuses_a_bad_group_before_running_the_task(tmp_path: Path) -> None:
    """The step adapter expands groups (``groups=``): a bad key fails the step at once, naming it, and the
    task never runs (no audit record, no output)."""
    from aitasks.runtime.audit import AuditLog
    from aitasks.runtime.step import run_step

    ctx = ({"storage_root": str(tmp_path / "store")}, "unit", "r1", "train-model")
    with pytest.raises(InvalidInputError, match=r"training\.epoch: unknown key"):
        run_step("model.train", {"training_set_uri": str(tmp_path / "nope")}, ctx, groups={"training": {"epoch": 1}})
    assert AuditLog(tmp_path / "store" / "audit").records() == []
