"""The config objects of the content-generation tasks: model directories, generation, output checks.

Every field changes what is generated or accepted, so each is a task input (part of the idempotency
key). Settings bound the expensive ones (``AITASKS_CONTENT_MAX_*``): a value over its bound is refused
with an error naming the field and the setting, never clamped silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aitasks.platform.compute import DEVICE_PATTERN
from aitasks.runtime.errors import FieldIssue
from aitasks.runtime.settings import Settings
from aitasks.runtime.task import TaskModel

__all__ = ["CheckConfig", "GenerationConfig", "ModelDirs", "bound_issues"]


class ModelDirs(TaskModel):
    """The model directories (``save_pretrained`` output; a path or a ``gs://`` prefix) per kind of prompt."""

    text: str = Field(default="", max_length=2048, description="Causal language model (transformers).")
    image: str = Field(default="", max_length=2048, description="Diffusion pipeline (diffusers).")
    music: str = Field(default="", max_length=2048, description="Text-to-audio model (transformers, MusicGen).")


class GenerationConfig(TaskModel):
    """How to generate: seed, device and precision, and the per-kind sizes."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Run seed; item and batch seeds derive from it.")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16/float16 on a GPU, float32 on a CPU."
    )
    num_threads: int = Field(default=0, ge=0, le=256, description="Torch CPU threads (0: usable CPUs, at most 4).")
    max_new_tokens: int = Field(default=48, ge=1, description="Text: new tokens per prompt.")
    temperature: float = Field(default=0.9, gt=0, le=5, description="Text and music sampling temperature.")
    top_k: int = Field(default=50, ge=0, le=10_000, description="Text and music: top-k sampling (0: off).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Text: nucleus sampling mass.")
    repetition_penalty: float = Field(default=1.2, ge=1, le=5, description="Text: penalty on repeated tokens.")
    image_steps: int = Field(default=20, ge=1, description="Image: denoising steps.")
    image_size: int = Field(default=0, ge=0, description="Image: side in pixels (0: the model's default).")
    guidance_scale: float = Field(default=7.5, ge=0, le=50, description="Image (text-conditioned): guidance.")
    audio_seconds: float = Field(default=4.0, gt=0, description="Music: clip length in seconds.")
    audio_format: Literal["flac", "ogg"] = Field(default="flac", description="Music: FLAC or Ogg Vorbis.")
    audio_peak_dbfs: float = Field(default=-1.0, ge=-30, le=0, description="Music: peak level after normalising.")


class CheckConfig(TaskModel):
    """Thresholds of the output checks; an output past one is rejected with the rule's name."""

    text_min_chars: int = Field(default=3, ge=1, description="Shorter text is empty.")
    text_max_word_share: float = Field(default=0.5, gt=0, le=1, description="One word over this share: degenerate.")
    text_max_repeats: int = Field(default=4, ge=2, description="An n-gram repeated this often in a row: degenerate.")
    text_min_distinct: float = Field(default=0.3, gt=0, le=1, description="Fewer distinct words: degenerate.")
    image_min_std: float = Field(default=0.02, ge=0, le=1, description="Pixel std below this: blank image.")
    audio_min_rms_dbfs: float = Field(default=-45.0, le=0, description="Quieter audio is refused.")
    audio_max_rms_dbfs: float = Field(default=-3.0, le=0, description="Louder audio is refused.")
    audio_max_clip_fraction: float = Field(default=0.001, ge=0, le=1, description="Share of clipped samples.")
    audio_max_silence_fraction: float = Field(default=0.5, ge=0, le=1, description="Share of silent windows.")
    audio_min_seconds: float = Field(default=0.5, ge=0, description="Shorter audio is refused.")


def bound_issues(gen: GenerationConfig, settings: Settings, prefix: str = "generation") -> list[FieldIssue]:
    """The generation fields over their settings bound, each naming the setting."""
    checks = [
        ("max_new_tokens", gen.max_new_tokens, settings.content_max_new_tokens, "AITASKS_CONTENT_MAX_NEW_TOKENS"),
        ("image_steps", gen.image_steps, settings.content_max_image_steps, "AITASKS_CONTENT_MAX_IMAGE_STEPS"),
        ("image_size", gen.image_size, settings.content_max_image_size, "AITASKS_CONTENT_MAX_IMAGE_SIZE"),
        ("audio_seconds", gen.audio_seconds, settings.content_max_audio_seconds, "AITASKS_CONTENT_MAX_AUDIO_SECONDS"),
    ]
    return [
        FieldIssue(f"{prefix}.{name}", f"{value} > {bound} (setting {setting})")
        for name, value, bound, setting in checks
        if value > bound
    ]
