"""Content generation throughput per generator: batched against one prompt at a time, same model, same run.

The models are the tiny ones built offline (:mod:`aitasks.content_generation.tiny_models`), saved and
loaded back through ``from_pretrained``, so the figures measure the generation code path (tokenising,
sampling loop, diffusion loop, EnCodec decoding, post-processing) rather than a real model's size:
absolute numbers say nothing about a production model on a GPU, the batched/unbatched ratio says how
much the batching of the pipeline's ``batch_size`` buys on this machine.

* **text**: new tokens per second, ``BATCH`` playlist/blurb prompts per ``generate`` call vs one per call;
* **image**: images per second, ``BATCH`` images per pipeline call (one seeded generator each) vs one;
* **music**: seconds of audio per second of wall time (× realtime), ``BATCH`` clips per call vs one.

Each side: a warm-up call, then the best of ``REPEATS`` passes over the same ``BATCH`` prompts; one
torch thread (the device, precision and thread count are in each record's params). Run
``python -m bench.content``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import record

BATCH = 8
REPEATS = 3


def _best(fn: Callable[[], float]) -> tuple[float, float]:
    """(best seconds, units produced) of ``REPEATS`` calls of ``fn`` (which returns its units)."""
    fn()  # warm-up
    best, units = float("inf"), 0.0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        units = fn()
        best = min(best, time.perf_counter() - t0)
    return best, units


def bench_content() -> list[dict[str, Any]]:
    import torch

    from aitasks.content_generation.catalog_text import catalog_records, demo_prompts
    from aitasks.content_generation.config import GenerationConfig
    from aitasks.content_generation.generate import generate_images, generate_music, generate_text
    from aitasks.content_generation.models import load_image_pipeline, load_music_model, load_text_model
    from aitasks.content_generation.prompts import PromptRecord, render_prompt
    from aitasks.content_generation.tiny_models import build_all
    from aitasks.platform.compute import torch_threads

    cpu, f32 = torch.device("cpu"), torch.float32
    cfg = GenerationConfig(seed=1, max_new_tokens=32, image_steps=10, audio_seconds=2.0)
    records = [PromptRecord.model_validate(p) for p in demo_prompts(catalog_records(40, seed=2), playlists=8)]
    text = [r for r in records if r.kind == "text"][:BATCH]
    texts, templates, ids = [render_prompt(r) for r in text], [r.template for r in text], [r.id for r in text]
    music_prompts = [f"a short loop number {i}" for i in range(BATCH)]
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-content-") as tmp, torch_threads(1):
        models = build_all(Path(tmp), text_steps=150, text_batch=8)
        lm = load_text_model(models["text"], cpu, f32, task="bench")
        pipe = load_image_pipeline(models["image"], cpu, f32, task="bench")
        mm = load_music_model(models["music"], cpu, f32, task="bench")

        def tokens(outs: list[Any]) -> float:
            return sum(g.measures["new_tokens"] for g in outs)

        def text_batched() -> float:
            return tokens(generate_text(lm, texts, templates, ids, cfg))

        def text_single() -> float:
            return sum(
                tokens(generate_text(lm, [t], [tp], [i], cfg)) for t, tp, i in zip(texts, templates, ids, strict=True)
            )

        def image_batched() -> float:
            return float(len(generate_images(pipe, ids, ids, cfg)))

        def image_single() -> float:
            return float(sum(len(generate_images(pipe, [i], [i], cfg)) for i in ids))

        def music_batched() -> float:
            return sum(g.measures["seconds"] for g in generate_music(mm, music_prompts, ids, cfg))

        def music_single() -> float:
            return sum(
                g.measures["seconds"]
                for p, i in zip(music_prompts, ids, strict=True)
                for g in generate_music(mm, [p], [i], cfg)
            )

        params = {"batch": BATCH, "repeats": REPEATS, "device": "cpu", "precision": "float32", "threads": 1}
        figures = [
            ("text", "tokens_per_s", "tokens/s", text_batched, text_single, {"max_new_tokens": cfg.max_new_tokens}),
            ("image", "images_per_s", "images/s", image_batched, image_single, {"steps": cfg.image_steps, "size": 32}),
            ("music", "x_realtime", "x", music_batched, music_single, {"seconds": cfg.audio_seconds, "rate": 8000}),
        ]
        for kind, metric, unit, batched, single, extra in figures:
            t_b, u_b = _best(batched)
            t_s, u_s = _best(single)
            out.append(
                record(
                    "content_generation",
                    f"{kind}_{metric}[batch={BATCH}]",
                    u_b / t_b,
                    unit,
                    f"{kind}_{metric}[batch=1]",
                    u_s / t_s,
                    {**params, **extra, "model": f"tiny {kind} (built offline)"},
                    higher_is_better=True,
                )
            )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_content(), indent=2))
