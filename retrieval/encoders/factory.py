"""The one factory: a spec string in, an Encoder out.

    create_encoder("starter")                      the bundled offline model (`xmodal train starter`)
    create_encoder("ViT-B-32:laion2b_s34b_b79k")   an open_clip ARCH:PRETRAINED pair
    create_encoder("path/to/model_dir")            xmodal_model.json + model.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.encoders.audio_tower import AudioTower
from retrieval.encoders.calibrate import calibrate_audio_tower, calibrate_image_tower
from retrieval.encoders.config import ModelConfig, load_config
from retrieval.encoders.model import Encoder
from retrieval.encoders.presets import preset_config
from retrieval.encoders.weights import fingerprint_dir, load_module_state, load_weights, split_state
from retrieval.errors import ModelLoadError, ModelNotFoundError

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
STARTER_DIR = Path(__file__).resolve().parent.parent / "weights" / "starter"
# Pretrained pairs come with an untrained audio tower until one is trained for them; seeding its
# initialisation makes index-time and query-time audio vectors agree across processes.
_UNTRAINED_AUDIO_SEED = 0


_MISSING_STARTER = ("the bundled starter model is missing from this installation (retrieval/weights/starter); "
                    "reinstall xmodal, or train it with `xmodal train starter`")


@dataclass(frozen=True)
class EncoderInfo:
    spec: str
    kind: str  # "starter" | "open_clip"
    available: bool  # usable offline right now
    note: str = ""


def select_device(preference: str | None = None) -> torch.device:
    """`cuda` when present unless told otherwise (`XMODAL_DEVICE=cpu`)."""
    choice = preference or os.environ.get("XMODAL_DEVICE", "auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def create_encoder(spec: str, device: str | None = None, batch_size: int = 64) -> Encoder:
    """Build the encoder named by `spec`.

    Raises:
        ModelNotFoundError: nothing of that name exists (the message lists what does).
        ModelLoadError: it exists but cannot be loaded (WeightsUnavailableError when offline).
    """
    torch_device = select_device(device)
    if spec == "starter":
        return _load_directory(resolve_model_dir(spec), "starter", torch_device, batch_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_directory(path, str(path.resolve()), torch_device, batch_size)
    from retrieval.encoders.pretrained import is_open_clip_pair

    if is_open_clip_pair(spec):
        return _load_pair(spec, torch_device, batch_size)
    raise ModelNotFoundError(_unknown_spec_message(spec, path))


def resolve_model_dir(spec: str) -> Path:
    """The model directory a spec names ("starter" or a path).

    Raises:
        ModelNotFoundError: the spec names no model directory.
    """
    if spec == "starter":
        if not (STARTER_DIR / "xmodal_model.json").is_file():
            raise ModelNotFoundError(_MISSING_STARTER)
        return STARTER_DIR
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(_unknown_spec_message(spec, path))
    return path.resolve()


def list_encoders() -> list[EncoderInfo]:
    """Every spec the factory knows by name (model directories are any path)."""
    import open_clip

    from retrieval.encoders.pretrained import cached_checkpoint

    starter = (STARTER_DIR / "xmodal_model.json").is_file()
    note = "bundled" if starter else "missing: reinstall, or `xmodal train starter`"
    infos = [EncoderInfo("starter", "starter", starter, note)]
    for arch, tag in open_clip.list_pretrained():
        cached = cached_checkpoint(open_clip.get_pretrained_cfg(arch, tag)) is not None
        note = "cached" if cached else "downloads on first use"
        infos.append(EncoderInfo(f"{arch}:{tag}", "open_clip", cached, note))
    return infos


def _unknown_spec_message(spec: str, path: Path) -> str:
    if os.sep in spec or spec.startswith("."):
        return f"no model directory at {path}"
    examples = f"starter, {DEFAULT_MODEL}, RN50:openai, or a model directory"
    return (f"unknown model {spec!r}: not a model directory nor an open_clip ARCH:PRETRAINED pair "
            f"(e.g. {examples}); `xmodal models` lists them")


def _build_clip(model_cfg: dict) -> torch.nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ModelLoadError("CoCa-style models (multimodal_cfg) are not supported as encoders")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    return (CustomTextCLIP if custom else CLIP)(**cfg)


def _load_directory(model_dir: Path, spec: str, device: torch.device, batch_size: int) -> Encoder:
    config = load_config(model_dir)
    state = load_weights(model_dir)
    audio_tower = AudioTower(config.audio, config.embed_dim)
    load_module_state(audio_tower, split_state(state, "audio"), "audio tower", model_dir)
    if config.pretrained:
        from retrieval.encoders.pretrained import load_pretrained_clip

        clip_model, tokenizer, preprocess = load_pretrained_clip(config.pretrained)
    else:
        clip_model = _build_clip(config.model_cfg)
        load_module_state(clip_model, split_state(state, "clip"), "image/text tower", model_dir)
        tokenizer = make_tokenizer(config)
        preprocess = config.image
    if config.image is not None:
        preprocess = config.image
    return Encoder(spec, config, clip_model, tokenizer, audio_tower, preprocess,
                   fingerprint_dir(model_dir), device, batch_size)


def make_tokenizer(config: ModelConfig):
    """open_clip's BPE tokenizer, mapped onto the model's compact vocabulary when it keeps one."""
    if config.vocab is not None:
        from retrieval.encoders.vocab import CompactTokenizer

        return CompactTokenizer(config.vocab, config.context_length)
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=config.context_length)


def _load_pair(spec: str, device: torch.device, batch_size: int) -> Encoder:
    from retrieval.encoders.pretrained import load_pretrained_clip

    clip_model, tokenizer, preprocess = load_pretrained_clip(spec)
    embed_dim = int(clip_model.text_projection.shape[1]) if hasattr(clip_model, "text_projection") else None
    base = preset_config(spec.split(":", 1)[0])
    config = ModelConfig(name=spec, embed_dim=embed_dim or base.embed_dim, audio=base.audio, pretrained=spec,
                         description="open_clip pretrained towers with an untrained audio tower")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_UNTRAINED_AUDIO_SEED)
        audio_tower = AudioTower(config.audio, config.embed_dim)
    calibrate_audio_tower(audio_tower, config.audio.front_end, _UNTRAINED_AUDIO_SEED)
    audio_key = json.dumps(config.to_dict()["audio"], sort_keys=True)
    fingerprint = hashlib.sha256(f"{spec}|untrained-audio-{_UNTRAINED_AUDIO_SEED}|{audio_key}".encode())
    return Encoder(spec, config, clip_model, tokenizer, audio_tower, preprocess,
                   fingerprint.hexdigest()[:32], device, batch_size)


def init_model_dir(out: Path, architecture: str = "small", seed: int = 0) -> ModelConfig:
    """Create a randomly initialised model directory from a preset or open_clip architecture.

    It is a valid `--model` spec at once (duplicate search works; meaning comes with training).
    """
    from retrieval.encoders.weights import save_model_dir

    config = preset_config(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_model = _build_clip(config.model_cfg)
        audio_tower = AudioTower(config.audio, config.embed_dim)
    calibrate_image_tower(clip_model.visual, config.image, seed)
    calibrate_audio_tower(audio_tower, config.audio.front_end, seed)
    save_model_dir(out, config, {"clip": clip_model, "audio": audio_tower})
    return config
