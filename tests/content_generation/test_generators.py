"""Each generator through its real loading path (from_pretrained on a saved directory), seeded and reproducible;
model directories that hold pickle or code are refused; gs:// directories load through a content-keyed cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aitasks.content_generation.config import GenerationConfig
from aitasks.content_generation.generate import derive_seed, generate_images, generate_music, generate_text
from aitasks.content_generation.models import (
    check_model_dir,
    load_image_pipeline,
    load_music_model,
    load_text_model,
    local_model_dir,
    model_identity,
    remote_fingerprint,
    resolve_precision,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError

CPU = torch.device("cpu")
F32 = torch.float32
GEN = GenerationConfig(seed=3, max_new_tokens=12, image_steps=3, audio_seconds=1.0, num_threads=1)


def test_text_model_loads_through_auto_classes_and_is_reproducible(tiny_models: dict[str, str]) -> None:
    lm = load_text_model(tiny_models["text"], CPU, F32, task="t")
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and lm.tokenizer.padding_side == "left"
    assert lm.identity.library == "transformers" and len(lm.identity.sha256) == 64
    texts = ["Playlist: jazz for focus.\nTitle:", "Track: Blue Hour by Mira Lane, soul, 1999.\nBlurb:"]
    templates, ids = ["playlist_title", "track_blurb"], ["a", "b"]
    first = generate_text(lm, texts, templates, ids, GEN)
    again = generate_text(lm, texts, templates, ids, GEN)
    other = generate_text(lm, texts, templates, ids, GEN.model_copy(update={"seed": 4}))
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other]
    assert all("\n" not in g.text for g in first), "a templated answer is one line"
    assert first[0].derived_seed == derive_seed(3, "text", "a", "b") and first[0].seed_scope == "batch"
    assert all(0 < g.measures["new_tokens"] <= 12 for g in first)


def test_generation_leaves_the_callers_random_state_alone(tiny_models: dict[str, str]) -> None:
    lm = load_text_model(tiny_models["text"], CPU, F32, task="t")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_text(lm, ["Playlist: pop for the gym.\nTitle:"], ["playlist_title"], ["a"], GEN)
    assert torch.equal(torch.rand(3), expected)


def test_image_pipeline_is_seeded_per_item(tiny_models: dict[str, str]) -> None:
    pipe = load_image_pipeline(tiny_models["image"], CPU, F32, task="t")
    assert type(pipe.model).__name__ == "DDPMPipeline" and pipe.identity.library == "diffusers"
    batch = generate_images(pipe, ["a cover", "b cover"], ["x", "y"], GEN)
    alone = generate_images(pipe, ["b cover"], ["y"], GEN)
    assert batch[0].image.shape == (32, 32, 3) and batch[0].image.dtype == np.uint8
    # An image depends on its id and the seed, not on the batch it was generated in.
    assert np.array_equal(batch[1].image, alone[0].image)
    assert not np.array_equal(batch[0].image, batch[1].image)
    assert batch[0].parameters["conditioning"].startswith("none"), "the tiny pipeline is unconditional: said so"


def test_music_model_makes_clips_of_the_asked_length_reproducibly(tiny_models: dict[str, str]) -> None:
    mm = load_music_model(tiny_models["music"], CPU, F32, task="t")
    assert type(mm.model).__name__ == "MusicgenForConditionalGeneration"
    first = generate_music(mm, ["calm piano", "fast drums"], ["a", "b"], GEN)
    again = generate_music(mm, ["calm piano", "fast drums"], ["a", "b"], GEN)
    assert first[0].sample_rate == 8000 and first[0].audio.shape == (8000, 1)
    assert np.array_equal(first[0].audio, again[0].audio) and not np.array_equal(first[0].audio, first[1].audio)
    peak = float(np.abs(first[0].audio).max())
    assert peak == pytest.approx(10 ** (-1 / 20), rel=1e-3), "peak-normalised to -1 dBFS"


def test_float16_on_cpu_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInputError, match=r"generation\.precision: float16 needs a CUDA device"):
        resolve_precision("float16", CPU, task="t")
    assert resolve_precision("auto", CPU, task="t") == torch.float32


@pytest.mark.parametrize(
    ("planted", "content", "match"),
    [
        ("pytorch_model.bin", b"\x80\x04pickle", "pickle-based weights or code"),
        ("unet/diffusion_pytorch_model.ckpt", b"x", "pickle-based weights or code"),
        ("modeling_evil.py", b"import os", "pickle-based weights or code"),
        ("config.json", json.dumps({"auto_map": {"AutoModel": "evil.Model"}}).encode(), "remote code"),
    ],
)
def test_model_dirs_with_pickle_or_code_are_refused(
    tiny_models: dict[str, str], tmp_path: Path, planted: str, content: bytes, match: str
) -> None:
    src = tiny_models["image"] if planted.startswith("unet") else tiny_models["text"]
    root = tmp_path / "m"
    shutil.copytree(src, root)
    target = root / planted
    if planted == "config.json":
        cfg = json.loads(target.read_text())
        cfg.update(json.loads(content))
        target.write_text(json.dumps(cfg))
    else:
        target.write_bytes(content)
    with pytest.raises(DataFormatError, match=match):
        check_model_dir(root, field="models.text", task="t")
    with pytest.raises(DataFormatError, match=match):
        (load_image_pipeline if planted.startswith("unet") else load_text_model)(str(root), CPU, F32, task="t")


def test_model_index_may_only_name_diffusers_or_transformers(tiny_models: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "m"
    shutil.copytree(tiny_models["image"], root)
    index = json.loads((root / "model_index.json").read_text())
    index["scheduler"] = ["os", "system"]
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DataFormatError, match="names library 'os'"):
        check_model_dir(root, field="models.image", task="t")


def test_missing_or_weightless_model_dirs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"models\.text: model directory not found"):
        load_text_model(str(tmp_path / "nope"), CPU, F32, task="t")
    with pytest.raises(InvalidInputError, match=r"models\.music: no model directory given"):
        load_music_model("", CPU, F32, task="t")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(DataFormatError, match=r"no \.safetensors weights"):
        check_model_dir(tmp_path / "empty", field="models.text", task="t")


def test_gcs_model_dir_is_downloaded_once_into_a_content_keyed_cache(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    from aitasks.runtime.storage import GCSStorage, put_tree
    from tests.fakes.gcs import FakeGCSClient

    st = GCSStorage(FakeGCSClient())
    uri = "gs://models/text/tiny-text"
    put_tree(Path(tiny_models["text"]), uri, st)
    cache = tmp_path / "cache"
    lm = load_text_model(uri, CPU, F32, task="t", storage=st, cache_dir=cache)
    local = load_text_model(tiny_models["text"], CPU, F32, task="t")
    assert lm.identity.sha256 == local.identity.sha256, "same files, same identity wherever they are loaded from"
    assert lm.identity.name == "tiny-text" and lm.uri == uri
    [entry] = list(cache.iterdir())
    assert local_model_dir(uri, storage=st, cache_dir=cache) == entry, "second load: the cached copy"
    a = generate_text(lm, ["Playlist: rock for focus.\nTitle:"], ["playlist_title"], ["a"], GEN)
    b = generate_text(local, ["Playlist: rock for focus.\nTitle:"], ["playlist_title"], ["a"], GEN)
    assert a[0].text == b[0].text
    before = remote_fingerprint(uri, st)
    st.write_bytes(uri + "/config.json", b"{}")
    assert remote_fingerprint(uri, st) != before, "a changed object changes the fingerprint (and the task key)"


def test_identity_changes_with_the_weights(tiny_models: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "m"
    shutil.copytree(tiny_models["text"], root)
    before = model_identity(root, str(root)).sha256
    cfg = json.loads((root / "generation_config.json").read_text())
    cfg["max_length"] = 99
    (root / "generation_config.json").write_text(json.dumps(cfg))
    assert model_identity(root, str(root)).sha256 != before
