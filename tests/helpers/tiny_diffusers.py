"""Tiny, randomly initialised diffusers pipelines built on the spot (no download), saved as a
local pipeline directory with safetensors weights, for testing the diffusers adapter.

The components follow diffusers' own test fixtures for these pipelines, shrunk; the tokenizer is
a byte-level BPE with a handful of merges written here, since CLIP's real vocabulary would have
to be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    # Every byte-level character as a token (GPT-2's byte-to-unicode map), so any text tokenizes,
    # plus CLIP's specials.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(shifted))]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    for symbol in symbols:
        vocab.setdefault(symbol + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _text_encoder(hidden: int, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        hidden_size=hidden, projection_dim=hidden, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, pad_token_id=vocab_size - 1,
                                        vocab_size=vocab_size, max_position_embeddings=16)).eval()


def _unet(hidden: int, class_dim: int | None):
    from diffusers import UNet2DConditionModel

    extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": class_dim} if class_dim else {}
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
                                attention_head_dim=(2, 4), cross_attention_dim=hidden, layers_per_block=1,
                                norm_num_groups=32, **extra)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                         norm_num_groups=32, sample_size=32)


def tiny_unclip_pipeline(folder: Path, embed_dim: int) -> Path:
    """A Stable unCLIP (img2img) pipeline that takes `embed_dim`-wide image embeddings; 32 px out."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    hidden = 32
    tokenizer = _tokenizer(folder / "_vocab")
    pipeline = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=hidden, projection_dim=embed_dim, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, intermediate_size=37, patch_size=4)).eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=_text_encoder(hidden, len(tokenizer)),
        unet=_unet(hidden, 2 * embed_dim),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=_vae(),
    )
    out = folder / "unclip"
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def tiny_text_pipeline(folder: Path) -> Path:
    """A Stable Diffusion text-to-image pipeline (the SD-Turbo kind); 32 px out."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.manual_seed(0)
    hidden = 32
    tokenizer = _tokenizer(folder / "_vocab")
    pipeline = StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(hidden, len(tokenizer)),
                                       tokenizer=tokenizer, unet=_unet(hidden, None),
                                       scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    out = folder / "text"
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
