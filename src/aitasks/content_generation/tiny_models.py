"""Tiny models built offline, saved with ``save_pretrained``: the real loading path without downloads.

For tests, the bench and demos (no weights can be downloaded here):

* :func:`build_text_model`: a byte-level BPE tokenizer trained by ``tokenizers`` and a 2-layer GPT-2
  trained for a few hundred steps on the generated catalog text
  (:func:`aitasks.content_generation.catalog_text.training_corpus`), so it writes template-shaped titles,
  descriptions and blurbs;
* :func:`build_image_pipeline`: a ~160k-parameter ``UNet2DModel`` and a DDIM scheduler in a
  ``DDPMPipeline`` (unconditional, 32x32): the prompt is recorded, not used;
* :func:`build_music_model`: MusicGen (``MusicgenForConditionalGeneration``) from a tiny T5 text
  encoder, a tiny EnCodec (8 kHz, 50 frames/s; two bandwidths so it has at least as many quantizers as
  the decoder has codebooks) and a 1-layer decoder with 2 codebooks, sharing the text model's tokenizer.

Everything is seeded; weights are written as safetensors. Building uses one torch thread: these models
are too small to gain from more, and on a busy machine extra threads cost many times their work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_all", "build_image_pipeline", "build_music_model", "build_text_model"]


def _tokenizer(corpus: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos)


def build_text_model(dest: Path, *, seed: int = 0, steps: int = 200, docs: int = 400, batch_size: int = 16) -> Path:
    """Train and save a tiny GPT-2 on generated catalog text; returns ``dest``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from aitasks.content_generation.catalog_text import training_corpus
    from aitasks.platform.compute import torch_threads

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    corpus = training_corpus(docs, seed=seed)
    tok = _tokenizer(corpus)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch_threads(1), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
        batch = tok(
            [d + tok.eos_token for d in corpus], return_tensors="pt", padding=True, truncation=True, max_length=64
        )
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(corpus), (batch_size,), generator=gen)
            ids, mask = batch.input_ids[idx], batch.attention_mask[idx]
            # The first pad after a document is its end-of-text token: learn to stop there.
            first_pad = mask.sum(dim=1).clamp(max=ids.shape[1] - 1)
            labels = ids.masked_fill(mask == 0, -100)
            labels[torch.arange(ids.shape[0]), first_pad] = tok.eos_token_id
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def build_image_pipeline(dest: Path, *, seed: int = 0, size: int = 32) -> Path:
    """Save a tiny unconditional diffusion pipeline (UNet2DModel + DDIM scheduler); returns ``dest``."""
    import torch
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel
    from diffusers.utils import logging as df_logging

    from aitasks.platform.compute import torch_threads

    df_logging.set_verbosity_error()
    with torch_threads(1), torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=size,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
    pipe: Any = DDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.save_pretrained(dest)
    return dest


def build_music_model(dest: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """Save a tiny MusicGen sharing the tokenizer saved in ``tokenizer_dir``; returns ``dest``."""
    import torch
    from transformers import (
        AutoTokenizer,
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )
    from transformers.utils import logging as hf_logging

    from aitasks.platform.compute import torch_threads

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    text_cfg: dict[str, Any] = {
        "decoder_start_token_id": tok.pad_token_id,
    }
    text = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **text_cfg,
    )
    codec = EncodecConfig(
        sampling_rate=8000,
        audio_channels=1,
        num_filters=4,
        codebook_size=64,
        codebook_dim=16,
        hidden_size=16,
        upsampling_ratios=[5, 4, 4, 2],
        target_bandwidths=[1.5, 3.0],
        num_lstm_layers=1,
        norm_type="weight_norm",
    )
    codebook = codec.codebook_size
    decoder = MusicgenDecoderConfig(
        # As the released MusicGen checkpoints: pad/start token one past the codebook (never sampled).
        vocab_size=codebook,
        max_position_embeddings=2048,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        hidden_size=32,
        num_codebooks=2,
        pad_token_id=codebook,
        bos_token_id=codebook,
    )
    cfg = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())
    with torch_threads(1), torch.random.fork_rng():
        torch.manual_seed(seed)
        model: Any = MusicgenForConditionalGeneration(cfg)
        # EnCodec's codebooks start as zeros (a released checkpoint fills them): give them random entries so
        # that different codes decode to different sound.
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
    gc = model.generation_config
    gc.decoder_start_token_id = codebook
    gc.pad_token_id = codebook
    gc.do_sample = True
    gc.guidance_scale = None
    gc.max_new_tokens = 200
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def build_all(root: Path, *, seed: int = 0, text_steps: int = 200, text_batch: int = 16) -> dict[str, str]:
    """Build the three tiny models under ``root``; returns ``{"text", "image", "music"}`` -> directory."""
    text = build_text_model(root / "tiny-text", seed=seed, steps=text_steps, batch_size=text_batch)
    image = build_image_pipeline(root / "tiny-image", seed=seed)
    music = build_music_model(root / "tiny-music", text, seed=seed)
    return {"text": str(text), "image": str(image), "music": str(music)}
