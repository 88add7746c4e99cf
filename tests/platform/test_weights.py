"""safetensors persistence: canonical bytes, round trip, and files refused before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from aitasks.platform.weights import canonical_safetensors, load_tensors, save_tensors, tensor_specs
from aitasks.runtime.errors import DataFormatError

META = {"format": "test.model", "version": "1", "a_first": "x"}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)  # holds an int64 buffer (num_batches_tracked)


@pytest.fixture
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def _check_format(meta: dict[str, str]) -> None:
    if meta.get("format") != "test.model":
        raise DataFormatError("w", f"format {meta.get('format')!r}")


def test_round_trip_keeps_names_shapes_dtypes_values_and_metadata(model: Tiny, tmp_path: Path) -> None:
    path = tmp_path / "m" / "model.safetensors"
    save_tensors(path, model.state_dict(), metadata=META)
    specs = tensor_specs(model.state_dict())
    assert specs["lin.weight"] == ((3, 4), "F32") and specs["norm.num_batches_tracked"] == ((), "I64")
    tensors, meta = load_tensors(path, specs, check_metadata=_check_format)
    assert meta == META
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[name], value), name
    fresh = Tiny()
    fresh.load_state_dict(tensors, strict=True)
    assert [p.name for p in tmp_path.joinpath("m").iterdir()] == ["model.safetensors"]  # no temp left


def test_equal_weights_give_equal_bytes_whatever_the_metadata_order(model: Tiny, tmp_path: Path) -> None:
    save_tensors(tmp_path / "a.safetensors", model.state_dict(), metadata=META)
    save_tensors(tmp_path / "b.safetensors", model.state_dict(), metadata=dict(reversed(list(META.items()))))
    raw = (tmp_path / "a.safetensors").read_bytes()
    assert raw == (tmp_path / "b.safetensors").read_bytes()
    assert canonical_safetensors(raw) == raw  # idempotent
    size = int.from_bytes(raw[:8], "little")
    assert list(json.loads(raw[8 : 8 + size])["__metadata__"]) == sorted(META)


def test_meta_device_specs_match_a_real_model(model: Tiny) -> None:
    with torch.device("meta"):
        ghost = Tiny()
    assert tensor_specs(ghost.state_dict()) == tensor_specs(model.state_dict())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("shape", r"tensor 'lin.weight' is F32\[2, 4\], expected F32\[3, 4\]"),
        ("dtype", r"tensor 'lin.bias' is F64\[3\], expected F32\[3\]"),
        ("extra", r"unexpected \['backdoor'\]"),
        ("missing", r"missing \['lin.bias'\]"),
        ("metadata", "format 'other'"),
    ],
)
def test_a_tampered_or_wrong_shaped_file_is_refused_with_a_clear_error(
    model: Tiny, tmp_path: Path, tamper: str, message: str
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    meta = dict(META)
    if tamper == "shape":
        state["lin.weight"] = state["lin.weight"][:2]
    elif tamper == "dtype":
        state["lin.bias"] = state["lin.bias"].double()
    elif tamper == "extra":
        state["backdoor"] = torch.zeros(1)
    elif tamper == "missing":
        del state["lin.bias"]
    else:
        meta["format"] = "other"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(DataFormatError, match=message) as err:
        load_tensors(path, tensor_specs(model.state_dict()), check_metadata=_check_format)
    assert err.value.uri.endswith("model.safetensors") or tamper == "metadata"


def test_truncated_garbage_and_missing_files_are_refused(model: Tiny, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    specs = tensor_specs(model.state_dict())
    with pytest.raises(DataFormatError, match="file is missing"):
        load_tensors(path, specs)
    save_tensors(path, model.state_dict(), metadata=META)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="not a valid safetensors file"):
        load_tensors(path, specs)
    path.write_bytes(b"\x80\x04pickle? never")
    with pytest.raises(DataFormatError, match="not a valid safetensors file"):
        load_tensors(path, specs)
