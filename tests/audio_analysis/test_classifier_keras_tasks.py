"""The tasks end to end with the Keras backend: train, register in MLflow, download, reload; explain into MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aitasks.audio_analysis import tasks as T
from aitasks.audio_analysis.classifier import load_any_classifier, load_labelled_folder, predict
from aitasks.audio_analysis.classifier.keras_backend import KERAS_FILE, SAVED_MODEL_DIR, KerasMelCnn
from aitasks.audio_analysis.synthetic import write_labelled_folder
from aitasks.platform.registry import client, download_model, get_version, registry_config
from aitasks.runtime.bundle import open_bundle
from aitasks.runtime.errors import InvalidInputError
from tests.conftest import CapturedRuntime


@pytest.mark.slow
def test_a_keras_classifier_is_trained_registered_downloaded_and_explained(tmp_path: Path) -> None:
    cap = CapturedRuntime(tmp_path)
    rt = cap.rt
    labelled = tmp_path / "labelled"
    write_labelled_folder(labelled, per_class=6, seed=3, sr=22050, duration_s=1.2)
    common = {"labelled_root": str(labelled), "epochs": 2, "clip_seconds": 1.0, "device": "cpu"}
    trained = T.train_classifier_task({**common, "backend": "keras"}, runtime=rt)
    assert trained.n_test == 8 and 0.0 <= trained.accuracy <= 1.0
    with open_bundle(trained.model_uri, rt.storage, kind="model") as (model_dir, manifest):
        names = sorted(p.name for p in model_dir.iterdir())
        assert names == ["MANIFEST.json", "config.json", KERAS_FILE, "report.json", SAVED_MODEL_DIR]
        assert manifest["meta"]["params"]["backend"] == "keras"
        from_bundle, cfg = load_any_classifier(model_dir)
    assert isinstance(from_bundle, KerasMelCnn) and cfg.backend == "keras"

    # Registered like the torch model: plain files with checksums, the backend as a tag.
    reg = T.register_classifier_task({"model_uri": trained.model_uri}, runtime=rt)
    assert reg.created and reg.version == 1
    registry = registry_config(cap.settings, model_name="audio-classifier")
    version = get_version(registry, version=1)
    assert version is not None and version.tags["aitasks.backend"] == "keras"
    _, downloaded = download_model(registry, version=1, dest=tmp_path / "download")
    from_registry, cfg2 = load_any_classifier(downloaded)
    assert cfg2 == cfg
    clips = load_labelled_folder(labelled, cfg).clips[:6]
    for a, b in zip(predict(from_bundle, clips, cfg), predict(from_registry, clips, cfg), strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)

    # Explained, and the report attached to the registered version's run.
    explained = T.explain_classifier_task(
        {"model_uri": trained.model_uri, "labelled_root": str(labelled), "n_steps": 8, "registered_version": 1},
        runtime=rt,
    )
    assert explained.explained == 8 and explained.silent == 0 and explained.max_relative_delta < 0.25
    assert explained.mlflow_run_id == version.run_id
    page = Path(explained.report_uri).read_text("utf-8")
    assert page.count("<figure") == 8 and "keras" in page  # 2 held-out clips of each class
    got = Path(client(registry).download_artifacts(version.run_id, "explanations/explanations.html", str(tmp_path)))
    assert got.read_text("utf-8") == page
    tagged = get_version(registry, version=1)
    assert tagged is not None and tagged.tags["aitasks.explanations"] == "explanations/explanations.html"

    # A version that holds another model (a torch one) is refused by name; so is a missing version.
    torch_model = T.train_classifier_task({**common, "epochs": 1}, runtime=rt)
    assert T.register_classifier_task({"model_uri": torch_model.model_uri}, runtime=rt).version == 2
    for version_no, message in ((2, "holds another model"), (9, "has no version 9")):
        with pytest.raises(InvalidInputError, match=message) as err:
            T.explain_classifier_task(
                {
                    "model_uri": trained.model_uri,
                    "labelled_root": str(labelled),
                    "n_steps": 8,
                    "registered_version": version_no,
                },
                runtime=rt,
            )
        assert tuple(err.value.fields) == ("registered_version",)
    assert np.isfinite(explained.max_relative_delta)
