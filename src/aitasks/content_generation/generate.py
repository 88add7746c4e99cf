"""The generators: text (causal LM), image (diffusion pipeline), music (text-to-audio), seeded.

Each takes a loaded model (:mod:`aitasks.content_generation.models`), a batch of validated prompts of
its kind and the generation config, and returns one :class:`Generated` per prompt, in order.

Seeds. Image generation draws each item from its own ``torch.Generator`` seeded by
:func:`derive_seed` (run seed, item id): an image depends only on the model, its id, the run seed and
the parameters, not on which batch it landed in. ``generate()`` of transformers samples from the global
torch generator, so text and music are seeded per batch (run seed and the batch's ids) inside
``torch.random.fork_rng`` (the caller's random state is left as it was): the same prompt file, batch size
and seed give the same outputs. Provenance records which scope applied.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aitasks.content_generation.config import GenerationConfig
from aitasks.content_generation.models import LoadedModel
from aitasks.runtime.hashing import sha256_json

__all__ = ["Generated", "derive_seed", "generate_images", "generate_music", "generate_text"]

_SEED_SPACE = 2**63 - 1


def derive_seed(seed: int, *parts: str) -> int:
    """A seed in ``[0, 2**63)`` from the run seed and labels (item id, batch ids): stable across processes."""
    return int(sha256_json([seed, *parts])[:16], 16) % _SEED_SPACE


@dataclass
class Generated:
    """One output: its payload (text, RGB uint8 array, or float samples ``(frames, channels)``) and facts."""

    text: str = ""
    image: np.ndarray | None = None
    audio: np.ndarray | None = None
    sample_rate: int = 0
    derived_seed: int = 0
    seed_scope: str = "batch"
    parameters: dict[str, Any] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)


@contextmanager
def _seeded(seed: int, device: Any) -> Iterator[None]:
    """Seed torch (CPU and the device's GPU) for a block; restore the previous random state afterwards."""
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2**63)
        yield


def _post_text(raw: str, template: str) -> str:
    """The answer part of a continuation: up to the first blank line; a templated answer is its first line."""
    text = raw.replace("\r", "").strip()
    text = text.split("\n\n", 1)[0]
    if template != "free":
        text = text.split("\n", 1)[0]
    return text.strip()


def generate_text(
    lm: LoadedModel, texts: Sequence[str], templates: Sequence[str], ids: Sequence[str], cfg: GenerationConfig
) -> list[Generated]:
    """Continue each prompt with the causal LM (left-padded batch, sampling as configured)."""
    import torch

    tok, model = lm.tokenizer, lm.model
    limit = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 0) or 0)
    max_prompt = max(8, limit - cfg.max_new_tokens) if limit else None
    enc = tok(list(texts), return_tensors="pt", padding=True, truncation=max_prompt is not None, max_length=max_prompt)
    enc = {k: v.to(lm.device) for k, v in enc.items()}
    seed = derive_seed(cfg.seed, "text", *ids)
    params = {
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "repetition_penalty": cfg.repetition_penalty,
        "do_sample": True,
    }
    with _seeded(seed, lm.device), torch.inference_mode():
        out = model.generate(**enc, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **params)
    new = out[:, enc["input_ids"].shape[1] :]
    results = []
    for row, template in zip(new, templates, strict=True):
        n_tokens = int((row != tok.pad_token_id).sum())
        raw = tok.decode(row, skip_special_tokens=True)
        results.append(
            Generated(
                text=_post_text(raw, template),
                derived_seed=seed,
                seed_scope="batch",
                parameters=params,
                measures={"new_tokens": float(n_tokens)},
            )
        )
    return results


def _call_kwargs(pipe: Any, prompts: Sequence[str], cfg: GenerationConfig, generators: list[Any]) -> dict[str, Any]:
    """Arguments for ``pipe(...)``: only those its ``__call__`` accepts (text-conditioned or not)."""
    accepted = set(inspect.signature(pipe.__call__).parameters)
    kwargs: dict[str, Any] = {"num_inference_steps": cfg.image_steps, "generator": generators, "output_type": "np"}
    if "prompt" in accepted:
        kwargs["prompt"] = list(prompts)
        if "guidance_scale" in accepted:
            kwargs["guidance_scale"] = cfg.guidance_scale
    elif "batch_size" in accepted:
        kwargs["batch_size"] = len(prompts)
    if cfg.image_size and {"height", "width"} <= accepted:
        kwargs["height"] = kwargs["width"] = cfg.image_size
    return kwargs


def image_size_of(pipe: Any, cfg: GenerationConfig) -> int:
    """The side the pipeline will produce: the requested size when it takes one, else its UNet's sample size."""
    accepted = set(inspect.signature(pipe.__call__).parameters)
    if cfg.image_size and {"height", "width"} <= accepted:
        return cfg.image_size
    unet = getattr(pipe, "unet", None)
    size = getattr(getattr(unet, "config", None), "sample_size", 0)
    scale = getattr(pipe, "vae_scale_factor", 1) if "prompt" in accepted else 1
    return int(size if isinstance(size, int) else size[0]) * int(scale)


def generate_images(
    pipe_model: LoadedModel, prompts: Sequence[str], ids: Sequence[str], cfg: GenerationConfig
) -> list[Generated]:
    """Images from the diffusion pipeline, one seeded generator per item."""
    import torch

    pipe = pipe_model.model
    seeds = [derive_seed(cfg.seed, "image", i) for i in ids]
    gen_device = "cuda" if pipe_model.device.type == "cuda" else "cpu"
    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
    kwargs = _call_kwargs(pipe, prompts, cfg, generators)
    conditioned = "prompt" in kwargs
    with torch.inference_mode():
        out = pipe(**kwargs)
    images = np.asarray(out.images, dtype=np.float32)
    params = {
        "steps": cfg.image_steps,
        "size": int(images.shape[1]),
        "guidance_scale": cfg.guidance_scale if conditioned else None,
        "conditioning": "text prompt" if conditioned else "none (unconditional pipeline: prompt recorded only)",
        "scheduler": type(getattr(pipe, "scheduler", None)).__name__,
    }
    results = []
    for img, s in zip(images, seeds, strict=True):
        rgb = np.clip(np.rint(np.nan_to_num(img) * 255.0), 0, 255).astype(np.uint8)
        results.append(Generated(image=rgb, derived_seed=s, seed_scope="item", parameters=params))
    return results


def generate_music(
    mm: LoadedModel, prompts: Sequence[str], ids: Sequence[str], cfg: GenerationConfig
) -> list[Generated]:
    """Clips from the text-to-audio model: ``audio_seconds`` long, peak-normalised to ``audio_peak_dbfs``.

    A clip whose peak is under -80 dBFS is left as it is (nothing to normalise): the check rejects it.
    """
    import torch

    model, tok = mm.model, mm.tokenizer
    codec = model.config.audio_encoder
    rate = int(codec.sampling_rate)
    frame_rate = float(getattr(codec, "frame_rate", 0) or rate / math.prod(codec.upsampling_ratios))
    # MusicGen's delay pattern costs one frame per extra codebook: ask for that many more, then trim.
    codebooks = int(getattr(model.config.decoder, "num_codebooks", 1))
    tokens = max(1, math.ceil(cfg.audio_seconds * frame_rate)) + codebooks
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    enc = {k: v.to(mm.device) for k, v in enc.items()}
    seed = derive_seed(cfg.seed, "music", *ids)
    params = {
        "seconds": cfg.audio_seconds,
        "max_new_tokens": tokens,
        "sample_rate": rate,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "peak_dbfs": cfg.audio_peak_dbfs,
        "format": cfg.audio_format,
    }
    with _seeded(seed, mm.device), torch.inference_mode():
        out = model.generate(**enc, do_sample=True, max_new_tokens=tokens, temperature=cfg.temperature, top_k=cfg.top_k)
    wave = out.float().cpu().numpy()  # (batch, channels, samples)
    frames = round(cfg.audio_seconds * rate)
    results = []
    target = 10 ** (cfg.audio_peak_dbfs / 20)
    for clip in wave:
        samples = np.nan_to_num(clip[:, :frames].T.astype(np.float32))
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        gain_db = 0.0
        if peak > 1e-4:
            gain = target / peak
            samples = samples * gain
            gain_db = 20 * math.log10(gain)
        results.append(
            Generated(
                audio=samples,
                sample_rate=rate,
                derived_seed=seed,
                seed_scope="batch",
                parameters={**params, "gain_db": round(gain_db, 2)},
                measures={"seconds": samples.shape[0] / rate},
            )
        )
    return results


def encode_png(rgb: np.ndarray, pnginfo: Any) -> bytes:
    """PNG bytes of an RGB uint8 array with the given text chunks."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()
