"""Named architectures for new, untrained models (`xmodal model init`, and part 2's training).

`micro` runs the test suite in seconds; `starter` is the bundled model's architecture, which trains
on two CPU cores in minutes (ModifiedResNet vision tower of width 16 at 64 px, 2-layer text
transformer); `small` is the same at width 32 (4x the image compute); any open_clip
architecture name (e.g. `ViT-B-32`) gives that architecture with random weights.
"""

from __future__ import annotations

import copy

from retrieval.encoders.config import AudioFrontEnd, AudioTowerConfig, ImagePreprocess, ModelConfig
from retrieval.errors import ModelNotFoundError


def _resnet_clip(embed_dim: int, image_size: int, width: int, text_width: int, text_layers: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": width, "patch_size": None},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": text_width, "heads": 2,
                     "layers": text_layers},
    }


PRESETS: dict[str, ModelConfig] = {
    "micro": ModelConfig(
        name="micro",
        embed_dim=32,
        model_cfg=_resnet_clip(32, image_size=32, width=8, text_width=32, text_layers=1),
        image=ImagePreprocess(size=32),
        audio=AudioTowerConfig(front_end=AudioFrontEnd(n_mels=32), channels=(8, 16)),
        description="A tiny random model for tests: exact-duplicate search only.",
    ),
    "starter": ModelConfig(
        name="starter",
        embed_dim=128,
        model_cfg=_resnet_clip(128, image_size=64, width=16, text_width=128, text_layers=2),
        image=ImagePreprocess(size=64),
        audio=AudioTowerConfig(channels=(16, 32, 64, 128)),
        description="The bundled starter's architecture: trains on two CPU cores in minutes.",
    ),
    "small": ModelConfig(
        name="small",
        embed_dim=128,
        model_cfg=_resnet_clip(128, image_size=64, width=32, text_width=128, text_layers=2),
        image=ImagePreprocess(size=64),
        audio=AudioTowerConfig(channels=(32, 64, 128, 128)),
        description="The starter-sized architecture (trains on two CPU cores in minutes).",
    ),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset_config(name: str) -> ModelConfig:
    """The config of a preset, or of an open_clip architecture with our default audio tower.

    Raises:
        ModelNotFoundError: neither a preset nor an open_clip architecture.
    """
    if name in PRESETS:
        return PRESETS[name]
    import open_clip

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ModelNotFoundError(
            f"unknown architecture {name!r}: use a preset ({', '.join(list_presets())}) or an open_clip "
            f"architecture such as ViT-B-32 (see `open_clip.list_models()`)"
        )
    model_cfg = copy.deepcopy(model_cfg)
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    size = image_size if isinstance(image_size, int) else image_size[0]
    return ModelConfig(
        name=name,
        embed_dim=int(model_cfg["embed_dim"]),
        model_cfg=model_cfg,
        image=ImagePreprocess(size=size),
        audio=AudioTowerConfig(),
        description=f"open_clip {name} architecture, randomly initialised.",
    )
