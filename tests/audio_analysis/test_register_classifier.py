"""audio.register_classifier: lineage, content-keyed versions, and the platform's one promotion policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from aitasks.audio_analysis import tasks as T
from aitasks.platform.registry import get_version, registry_config, rollback_alias
from aitasks.runtime.bundle import publish_bundle
from tests.conftest import CapturedRuntime


def _classifier_bundle(cap: CapturedRuntime, root: Path, name: str, *, seed: int, accuracy: float) -> str:
    """A classifier bundle as audio.train_classifier publishes it (weights, config, test report)."""
    src = root / name
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({"head.weight": rng.standard_normal((2, 4)).astype(np.float32)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"format": "aitasks.audio.mel_cnn", "seed": seed}), "utf-8")
    report = {
        "test": {
            "accuracy": accuracy,
            "macro_f1": accuracy,
            "chance": 0.5,
            "labels": ["tonal", "noise"],
            "per_class": {"tonal": {"f1": accuracy}, "noise": {"f1": accuracy}},
        }
    }
    (src / "report.json").write_text(json.dumps(report), "utf-8")
    meta = {"task": "audio.train_classifier@1.0.0", "params": {"epochs": 3, "seed": seed, "labels": ["tonal", "noise"]}}
    return publish_bundle(cap.rt.storage, src, str(root / "store" / "bundles" / name), kind="model", meta=meta)


def test_a_rolled_back_classifier_is_not_made_champion_again_by_re_registering(tmp_path: Path) -> None:
    cap = CapturedRuntime(tmp_path)
    rt = cap.rt
    first = _classifier_bundle(cap, tmp_path, "first", seed=1, accuracy=0.9)
    second = _classifier_bundle(cap, tmp_path, "second", seed=2, accuracy=0.95)
    r1 = T.register_classifier_task({"model_uri": first}, runtime=rt)
    r2 = T.register_classifier_task({"model_uri": second}, runtime=rt)
    assert (r1.version, r1.promoted, r2.version, r2.promoted) == (1, True, 2, True)
    reg = registry_config(cap.settings, model_name="audio-classifier")
    v2 = get_version(reg, version=2)
    assert v2 is not None and v2.tags["aitasks.labels"] == "tonal,noise" and v2.tags["aitasks.kfp_run_id"] == "run-test"

    assert rollback_alias(reg) == 1
    # Other inputs (a lower threshold), so the call runs again instead of returning the committed result.
    redo = T.register_classifier_task({"model_uri": second, "min_accuracy": 0.5}, runtime=rt)
    assert redo.version == 2 and not redo.created
    assert not redo.promoted, "re-registering must respect the rollback's ban"
    champion = get_version(reg, alias="champion")
    assert champion is not None and champion.version == 1


def test_a_classifier_below_the_threshold_is_registered_but_not_promoted(tmp_path: Path) -> None:
    cap = CapturedRuntime(tmp_path)
    weak = _classifier_bundle(cap, tmp_path, "weak", seed=3, accuracy=0.55)
    result = T.register_classifier_task({"model_uri": weak}, runtime=cap.rt)
    assert result.created and result.version == 1 and not result.promoted
    assert get_version(registry_config(cap.settings, model_name="audio-classifier"), alias="champion") is None
