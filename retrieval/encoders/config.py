"""Model configuration: dataclasses read from and written to a model directory's JSON.

A model directory holds `xmodal_model.json` and `model.safetensors`. The image and text towers
are either an open_clip architecture given inline (`clip.model_cfg`, open_clip's own JSON shape,
weights in the safetensors file under `clip.`) or a pretrained open_clip pair
(`clip.pretrained = "ARCH:TAG"`, weights from open_clip's cache). The audio tower is always ours
(weights under `audio.`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from retrieval.errors import ModelLoadError

CONFIG_NAME = "xmodal_model.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "xmodal-model"
FORMAT_VERSION = 1

# open_clip's OPENAI_DATASET_MEAN / STD: what its default preprocessing normalises with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocess:
    """Square input of `size` px: shortest side resized (bicubic), centre crop, then normalised."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


@dataclass(frozen=True)
class AudioFrontEnd:
    """The log-mel front end. Fixed so that index-time and query-time features always agree."""

    sample_rate: int = 16_000
    n_fft: int = 512  # 32 ms
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms: 100 frames per second
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8_000.0
    window_seconds: float = 4.0  # longer clips are cut into windows of this length...
    window_hop_seconds: float = 2.0  # ...overlapping by half, each with its own vector
    db_offset: float = 40.0  # features are (dB + offset) / scale: silence (-100 dB) maps to -3
    db_scale: float = 20.0

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def window_frames(self) -> int:
        return round(self.window_seconds * self.frames_per_second)

    @property
    def window_hop_frames(self) -> int:
        return round(self.window_hop_seconds * self.frames_per_second)


@dataclass(frozen=True)
class AudioTowerConfig:
    """A compact CNN over log-mel windows: conv blocks, masked pooling over time, projection."""

    front_end: AudioFrontEnd = field(default_factory=AudioFrontEnd)
    channels: tuple[int, ...] = (32, 64, 128, 256)
    dropout: float = 0.0


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """What decode workers need to prepare inputs without loading the model (picklable, no torch)."""

    image_size: int
    front_end: AudioFrontEnd
    mel_filterbank: Any = None  # (n_mels, n_fft // 2 + 1) float32; None: computed where needed


@dataclass(frozen=True)
class ModelConfig:
    name: str
    embed_dim: int
    audio: AudioTowerConfig
    model_cfg: dict[str, Any] | None = None  # open_clip model config (inline architecture)
    pretrained: str | None = None  # "ARCH:TAG" of open_clip (weights from its cache)
    image: ImagePreprocess | None = None  # None: take open_clip's preprocessing for `pretrained`
    description: str = ""
    vocab: tuple[int, ...] | None = None  # BPE ids kept by a compact text vocabulary (see vocab.py)

    def __post_init__(self) -> None:
        if (self.model_cfg is None) == (self.pretrained is None):
            raise ModelLoadError("a model config needs exactly one of clip.model_cfg and clip.pretrained")
        if self.vocab is not None:
            from retrieval.encoders.vocab import vocab_size

            declared = (self.model_cfg or {}).get("text_cfg", {}).get("vocab_size")
            if declared != vocab_size(self.vocab):
                raise ModelLoadError(f"clip.vocab keeps {len(self.vocab)} tokens, so text_cfg.vocab_size must be "
                                     f"{vocab_size(self.vocab)}, not {declared}")

    @property
    def context_length(self) -> int:
        if self.model_cfg is None:
            raise ValueError("context length of a pretrained model comes from open_clip")
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    def to_dict(self) -> dict[str, Any]:
        clip: dict[str, Any] = {"pretrained": self.pretrained} if self.pretrained else {"model_cfg": self.model_cfg}
        if self.image is not None:
            clip["preprocess"] = asdict(self.image)
        if self.vocab is not None:
            clip["vocab"] = list(self.vocab)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "embed_dim": self.embed_dim,
            "clip": clip,
            "audio": {**asdict(self.audio.front_end), "channels": list(self.audio.channels),
                      "dropout": self.audio.dropout},
            "weights": WEIGHTS_NAME,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if data.get("format") != FORMAT:
            raise ModelLoadError(f"not an xmodal model config (format={data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(f"unsupported model config version {data.get('format_version')!r}")
        clip = data["clip"]
        audio = dict(data.get("audio", {}))
        tower_keys = {f.name for f in fields(AudioTowerConfig)} - {"front_end"}
        tower = {k: audio.pop(k) for k in list(audio) if k in tower_keys}
        if "channels" in tower:
            tower["channels"] = tuple(tower["channels"])
        front_end = _merge(AudioFrontEnd(), audio)
        preprocess = clip.get("preprocess")
        image = None
        if preprocess is not None:
            image = _merge(ImagePreprocess(), preprocess)
            image = replace(image, mean=tuple(image.mean), std=tuple(image.std))
        return cls(
            name=data.get("name", "model"),
            embed_dim=int(data["embed_dim"]),
            audio=AudioTowerConfig(front_end=front_end, **tower),
            model_cfg=clip.get("model_cfg"),
            pretrained=clip.get("pretrained"),
            image=image,
            description=data.get("description", ""),
            vocab=tuple(int(i) for i in clip["vocab"]) if clip.get("vocab") is not None else None,
        )


def _merge(base, overrides: dict[str, Any]):
    """Overrides merged into a dataclass; unknown keys are an error, not silently dropped."""
    known = {f.name for f in fields(base)}
    unknown = set(overrides) - known
    if unknown:
        raise ModelLoadError(f"unknown {type(base).__name__} keys in model config: {sorted(unknown)}")
    return replace(base, **overrides)


def load_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_NAME
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir} is not a model directory: {CONFIG_NAME} is missing") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from None
