"""`xmodal train clip`: image and text towers trained together with symmetric InfoNCE.

The towers are open_clip's own classes (a ModifiedResNet and a small text transformer by default);
the loss is open_clip's ClipLoss made aware of shared concepts (loss.py). A new model keeps a
compact vocabulary of the tokens in its training captions (encoders/vocab.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.encoders.audio_tower import AudioTower
from retrieval.encoders.config import ModelConfig, ModelInputs
from retrieval.errors import TrainingDataError
from retrieval.training.data import Prepared, prepare_pairs, split_validation
from retrieval.training.loop import FitResult, TrainEvent, TrainOptions, fit
from retrieval.training.loss import ConceptClipLoss
from retrieval.training.metrics import concept_ranks, summarise

# The audio tower a new model starts with (trained later by `xmodal train audio`): small enough to
# train on two CPU cores in minutes.
COMPACT_AUDIO_CHANNELS = (16, 32, 64, 128)


@dataclass(frozen=True)
class ClipData:
    pixels: torch.Tensor  # (N, S, S, 3) uint8
    tokens: torch.Tensor  # (N, C, context) int64: every caption of every item, C = most captions of one item
    n_captions: torch.Tensor  # (N,) int64
    concepts: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.pixels)


def clip_data(prepared: Prepared, tokenizer) -> ClipData:
    pairs = prepared.pairs
    most = max(len(p.captions) for p in pairs)
    # Items with fewer captions repeat theirs; n_captions keeps sampling uniform over the real ones.
    texts = [p.captions[i % len(p.captions)] for p in pairs for i in range(most)]
    tokens = tokenizer(texts).view(len(pairs), most, -1)
    pixels = np.stack([prepared.media.pixels[p.image] for p in pairs])
    return ClipData(torch.from_numpy(pixels), tokens, torch.tensor([len(p.captions) for p in pairs]),
                    torch.tensor(prepared.concepts))


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image (B, 3, S, S) by up to `max_shift` px, repeating edge pixels."""
    if max_shift <= 0:
        return x
    b, _, s, _ = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")  # (B, 3, S + 2m, S + 2m)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(s)).to(x.device)  # (B, S)
    cols = (offsets[1][:, None] + torch.arange(s)).to(x.device)  # (B, S)
    index = rows[:, None, :, None].expand(b, 3, s, s + 2 * max_shift)
    x = padded.gather(2, index)  # (B, 3, S, S + 2m)
    x = x.gather(3, cols[:, None, None, :].expand(b, 3, s, s))  # (B, 3, S, S)
    return x.contiguous(memory_format=torch.channels_last)


class ClipTask:
    """Images and captions of the same items pulled together, everything else pushed apart."""

    def __init__(self, config: ModelConfig, model: nn.Module, audio_tower: nn.Module, train: ClipData,
                 val: ClipData, options: TrainOptions, device: torch.device, signature: dict) -> None:
        self.config = config
        # channels_last: 1.5x faster ResNet convolutions on CPU (measured, width 32 at 64 px).
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.audio_tower = audio_tower  # carried along unchanged so that the output is a whole model
        self.modules = {"clip": self.model}
        self.device = device
        self.train_data, self.val_data = train, val
        self.n_train = len(train)
        self.signature = signature
        self.loss_fn = ConceptClipLoss()
        self.max_shift = config.image.size // 16 if options.augment else 0
        preprocess = config.image
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _images(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def loss(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        data = self.train_data
        images = shift_augment(self._images(data.pixels[indices]), generator, self.max_shift)
        # One caption per item per step, drawn uniformly from that item's captions.
        choice = (torch.rand(len(indices), generator=generator) * data.n_captions[indices]).long()
        tokens = data.tokens[indices, choice].to(self.device)  # (B, context)
        image_features = self.model.encode_image(images, normalize=True)
        text_features = self.model.encode_text(tokens, normalize=True)
        return self.loss_fn(image_features, text_features, self.model.logit_scale.exp(),
                            data.concepts[indices].to(self.device))

    def after_step(self) -> None:
        with torch.no_grad():  # as open_clip: a temperature below 1/100 makes training unstable
            self.model.logit_scale.clamp_(0, np.log(100))

    def embed(self, data: ClipData, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(images, first captions) of `data` -> normalised (N, D) arrays each."""
        images, texts = [], []
        for start in range(0, len(data), batch):
            part = slice(start, start + batch)
            images.append(self.model.encode_image(self._images(data.pixels[part]), normalize=True).float().cpu())
            texts.append(self.model.encode_text(data.tokens[part, 0].to(self.device), normalize=True).float().cpu())
        return torch.cat(images).numpy(), torch.cat(texts).numpy()

    def validate(self) -> dict[str, float]:
        images, texts = self.embed(self.val_data)
        concepts = self.val_data.concepts.numpy()
        t2i = summarise(concept_ranks(texts, images, concepts, concepts))["R@1"]
        i2t = summarise(concept_ranks(images, texts, concepts, concepts))["R@1"]
        return {"score": (t2i + i2t) / 2, "text_image_R@1": t2i, "image_text_R@1": i2t}

    def save(self, out: Path) -> None:
        from retrieval.encoders.weights import save_model_dir

        save_model_dir(out, self.config, {"clip": self.model, "audio": self.audio_tower})


def new_clip_config(architecture: str, captions: Sequence[str], name: str) -> ModelConfig:
    """A preset architecture with a compact vocabulary of the training captions' tokens."""
    from retrieval.encoders.presets import preset_config
    from retrieval.encoders.vocab import build_vocab, vocab_size

    base = preset_config(architecture)
    model_cfg = copy.deepcopy(base.model_cfg)
    context = int(model_cfg["text_cfg"].get("context_length", 77))
    kept = build_vocab(captions, context)
    model_cfg["text_cfg"]["vocab_size"] = vocab_size(kept)
    return replace(base, name=name, model_cfg=model_cfg, vocab=kept,
                   description=f"{architecture} towers trained by `xmodal train clip`")


def _build(config: ModelConfig, base: Path | None, seed: int) -> tuple[nn.Module, nn.Module]:
    from retrieval.encoders.calibrate import calibrate_audio_tower
    from retrieval.encoders.factory import _build_clip
    from retrieval.encoders.weights import load_module_state, load_weights, split_state

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_clip(config.model_cfg)
        audio_tower = AudioTower(config.audio, config.embed_dim)
    if base is not None:
        state = load_weights(base)
        load_module_state(model, split_state(state, "clip"), "image/text tower", base)
        load_module_state(audio_tower, split_state(state, "audio"), "audio tower", base)
    else:
        calibrate_audio_tower(audio_tower, config.audio.front_end, seed)
    return model, audio_tower


def train_clip(pairs_file: Path, out: Path, options: TrainOptions, architecture: str = "starter",
               base: str | None = None, resume: bool = False, workers: int | None = None,
               on_event: Callable[[TrainEvent], None] | None = None,
               on_load: Callable[[int, int], None] | None = None) -> tuple[FitResult, Prepared]:
    """Train (or, from `base`, fine-tune) image and text towers on the image–caption pairs of a file.

    Raises:
        TrainingDataError: no usable image–caption pairs.
        TrainingStateError: see `fit`.
        ModelNotFoundError, ModelLoadError: a bad `architecture` or `base`.
    """
    from retrieval.encoders.config import load_config
    from retrieval.encoders.factory import make_tokenizer, resolve_model_dir, select_device

    base_dir = resolve_model_dir(base) if base is not None else None
    if base_dir is not None:
        config = replace(load_config(base_dir), name=Path(out).name)
        if config.model_cfg is None:
            raise TrainingDataError(f"{base} uses downloaded open_clip towers; fine-tuning them is not supported "
                                    f"(train an audio tower for them with `xmodal train audio --base {base}`)")
    else:
        captions = _captions_of(pairs_file)
        config = new_clip_config(architecture, captions, name=Path(out).name)
    inputs = ModelInputs(config.image.size, config.audio.front_end)
    prepared = prepare_pairs(pairs_file, ("train", "val"), inputs, need=("image", "captions"), decode=("image",),
                             workers=workers, progress=on_load)
    train, val = split_validation(prepared, options.val_fraction, options.seed)
    tokenizer = make_tokenizer(config)
    device = select_device(options.device)
    model, audio_tower = _build(config, base_dir, options.seed)
    signature = {"kind": "clip", "config": config.to_dict(), "pairs": prepared.fingerprint,
                 "base": str(base_dir) if base_dir else None}
    task = ClipTask(config, model, audio_tower, clip_data(train, tokenizer), clip_data(val, tokenizer),
                    options, device, signature)
    return fit(task, options, out, resume, on_event), prepared


def _captions_of(pairs_file: Path) -> list[str]:
    from retrieval.training.pairs import load_pairs

    return [c for p in load_pairs(pairs_file, ("train", "val")) if p.image is not None for c in p.captions]
