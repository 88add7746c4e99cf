"""Provenance of generated content: a sidecar per output, and the same facts inside the file's metadata.

Every output ``<id>.<ext>`` has ``<id>.<ext>.provenance.json`` beside it (:class:`Provenance`): which
model (name, library, class, sha256 of its files), which prompt (sha256 of the text the model saw,
template), which seeds and generation parameters, when, in which run and trace, and which task call
(name, version, idempotency key: the key of its audit record). The sidecar also holds the sha256 of
the output file itself, which the file cannot carry.

Images carry the provenance (without the file's own hash) as a PNG ``iTXt`` chunk
``aitasks:provenance`` plus the standard ``Software`` and ``Source`` keys; audio carries it in the
Vorbis comments of FLAC and Ogg files (``COMMENT`` holds the JSON, ``TITLE`` the item id, ``SOFTWARE``
the task). :func:`read_embedded` reads it back from either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FORMAT",
    "PNG_KEY",
    "ModelInfo",
    "Provenance",
    "read_embedded",
    "sidecar_name",
]

FORMAT: Final = "aitasks.content.provenance/1"
#: The PNG text chunk that holds the provenance JSON.
PNG_KEY: Final = "aitasks:provenance"
SIDECAR_SUFFIX: Final = ".provenance.json"


class ModelInfo(BaseModel):
    """Which model generated an output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The model directory's name (last path element of its URI).")
    uri: str = Field(description="Where it was loaded from (a path or gs:// URI).")
    sha256: str = Field(description="sha256 over the directory's files (relative paths and contents).")
    library: Literal["transformers", "diffusers"]
    architecture: str = Field(description="Model or pipeline class.")


class Provenance(BaseModel):
    """The provenance record of one generated output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["aitasks.content.provenance/1"] = FORMAT
    item_id: str
    kind: Literal["text", "image", "music"]
    file: str = Field(description="The output's file name.")
    sha256: str = Field(default="", description="sha256 of the output file (sidecar only).")
    model: ModelInfo
    prompt_sha256: str
    template: str
    seed: int = Field(description="The run's seed.")
    derived_seed: int = Field(description="The seed the generator used: per item (image) or per batch.")
    seed_scope: Literal["item", "batch"]
    batch: int
    batch_ids: list[str] = Field(description="Items generated in the same call (a batch seed covers them all).")
    parameters: dict[str, Any] = Field(description="Generation parameters in effect (steps, tokens, seconds...).")
    device: str
    precision: str
    generated_at: str = Field(description="UTC time (ISO 8601).")
    run_id: str
    pipeline: str
    trace_id: str
    task: str
    task_version: str
    idempotency_key: str = Field(description="Key of the task call; its audit records carry the same key.")
    code_version: str = Field(description="aitasks version.")

    def embedded_json(self) -> str:
        """Compact JSON for a file's own metadata (without the file's hash, which it cannot hold)."""
        return json.dumps(self.model_dump(mode="json", exclude={"sha256"}), separators=(",", ":"), sort_keys=True)


def sidecar_name(file_name: str) -> str:
    """``<file>.provenance.json``."""
    return file_name + SIDECAR_SUFFIX


def png_info(prov: Provenance) -> Any:
    """Pillow ``PngInfo`` with the provenance chunk and the standard keys."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_KEY, prov.embedded_json())
    info.add_text("Software", f"aitasks {prov.task} {prov.task_version}")
    info.add_text("Source", f"{prov.model.name} sha256:{prov.model.sha256[:16]}")
    return info


def set_audio_tags(handle: Any, prov: Provenance) -> None:
    """Write the provenance into an open, writable ``soundfile.SoundFile`` (FLAC or Ogg Vorbis comments)."""
    handle.title = prov.item_id
    handle.software = f"aitasks {prov.task} {prov.task_version}"
    handle.comment = prov.embedded_json()
    handle.date = prov.generated_at


def read_embedded(path: Path) -> dict[str, Any]:
    """The provenance stored inside a PNG, FLAC or Ogg file (``{}`` when it has none)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            raw = img.text.get(PNG_KEY, "") if hasattr(img, "text") else ""
    elif suffix in (".flac", ".ogg"):
        import soundfile as sf

        with sf.SoundFile(str(path)) as fh:
            raw = fh.comment or ""
    else:
        return {}
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
