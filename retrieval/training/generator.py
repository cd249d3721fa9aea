"""`xmodal train generator`: teach a conditional generator to draw what a vector of the shared space
describes (an unCLIP-style decoder for any model's space).

Each training image is paired with a condition drawn afresh every step: its own image embedding,
the embedding of one of its captions, or the embedding of its sound (a third each, where the pair
has a sound and the model an audio tower), all from the frozen embedding model. The three towers
map into one space but not onto one point: a sound's vector sits apart from its caption's, so a
generator that never saw sound vectors draws worse pictures for audio queries. A share of rows
(the config's `cond_dropout`) lose their condition, which trains the null condition that guidance
needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generation.config import GeneratorConfig
from generation.flow import flow_matching_loss
from generation.network import FlowUNet
from generation.storage import save_generator
from retrieval.encoders.model import Encoder
from retrieval.training.data import Prepared, prepare_pairs, split_validation
from retrieval.training.loop import FitResult, TrainEvent, TrainOptions, fit

EMBED_CHUNK = 256  # items per encoder call while embedding the training set


@dataclass(frozen=True)
class GeneratorData:
    images: torch.Tensor  # (N, 3, S, S) float32 in [-1, 1]
    image_vectors: torch.Tensor  # (N, D) the frozen image tower's embeddings
    caption_vectors: torch.Tensor  # (N, C, D) caption embeddings, zero-padded
    n_captions: torch.Tensor  # (N,) int64
    audio_vectors: torch.Tensor  # (N, D) the sound's embedding, zero where the pair has no sound
    has_audio: torch.Tensor  # (N,) bool

    def __len__(self) -> int:
        return len(self.images)


def generator_data(prepared: Prepared, encoder: Encoder, image_size: int) -> GeneratorData:
    """Images at the generator's size and the embedding model's vectors of them and their captions."""
    pairs, media = prepared.pairs, prepared.media
    pixels = np.stack([media.pixels[p.image] for p in pairs])  # (N, s, s, 3) uint8
    image_vectors = torch.from_numpy(np.concatenate([encoder.encode_pixels(pixels[s : s + EMBED_CHUNK])
                                                     for s in range(0, len(pixels), EMBED_CHUNK)]))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, s, s)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="area" if images.shape[-1] > image_size
                               else "bilinear", align_corners=None if images.shape[-1] > image_size else False)
    most = max((len(p.captions) for p in pairs), default=0)
    captions = torch.zeros(len(pairs), max(most, 1), encoder.dim)
    n_captions = torch.tensor([len(p.captions) for p in pairs])
    texts = [(row, column, text) for row, p in enumerate(pairs) for column, text in enumerate(p.captions)]
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        vectors = torch.from_numpy(encoder.encode_text([text for _, _, text in chunk]))
        for (row, column, _), vector in zip(chunk, vectors, strict=True):
            captions[row, column] = vector
    audio_vectors, has_audio = audio_conditions(prepared, encoder)
    return GeneratorData(images.contiguous(), image_vectors, captions, n_captions, audio_vectors, has_audio)


def audio_conditions(prepared: Prepared, encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled sound embeddings and (N,) which pairs have one."""
    media = prepared.media
    rows = [row for row, p in enumerate(prepared.pairs) if p.audio is not None and p.audio in media.log_mels]
    vectors = torch.zeros(len(prepared.pairs), encoder.dim)
    has_audio = torch.zeros(len(prepared.pairs), dtype=torch.bool)
    for start in range(0, len(rows), EMBED_CHUNK):
        chunk = rows[start : start + EMBED_CHUNK]
        clips = [prepared.pairs[row].audio for row in chunk]
        embedded = encoder.embed_log_mels([media.log_mels[c] for c in clips], [media.durations[c] for c in clips])
        for row, embedding in zip(chunk, embedded, strict=True):
            vectors[row] = torch.from_numpy(embedding.pooled)
            has_audio[row] = True
    return vectors, has_audio


def pick_conditions(data: GeneratorData, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, D): each row's image embedding, one of its captions' or its sound's, drawn from
    `generator` evenly among the kinds the row has (the image always)."""
    has_caption = data.n_captions[indices] > 0
    has_audio = data.has_audio[indices]
    kinds = 1 + has_caption.long() + has_audio.long()  # (B,) how many kinds each row can draw from
    draw = (torch.rand(len(indices), generator=generator) * kinds).long()  # 0 = image, then caption, then audio
    use_caption = has_caption & (draw == 1)
    use_audio = has_audio & (draw == kinds - 1) & (draw > 0)
    choice = (torch.rand(len(indices), generator=generator) * data.n_captions[indices].clamp(min=1)).long()
    conditions = torch.where(use_caption[:, None], data.caption_vectors[indices, choice], data.image_vectors[indices])
    return torch.where(use_audio[:, None], data.audio_vectors[indices], conditions)


class GeneratorTask:
    """Flow matching on (image, condition) rows; validation is the same loss with fixed draws."""

    def __init__(self, model: FlowUNet, train: GeneratorData, val: GeneratorData, device: torch.device,
                 signature: dict) -> None:
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.modules = {"generator": self.model}
        self.device = device
        self.train_data, self.val_data = train, val
        self.n_train = len(train)
        self.signature = signature

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"generator.{n}", p) for n, p in self.model.named_parameters()]

    def loss(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        data = self.train_data
        conditions = pick_conditions(data, indices, generator)
        images = data.images[indices].to(self.device, memory_format=torch.channels_last)
        return flow_matching_loss(self.model, images, conditions.to(self.device), generator)

    def after_step(self) -> None:
        pass

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        data, losses = self.val_data, []
        generator = torch.Generator().manual_seed(12345)  # the same draws every epoch: comparable scores
        for start in range(0, len(data), 128):
            indices = torch.arange(start, min(start + 128, len(data)))
            conditions = pick_conditions(data, indices, generator).to(self.device)
            images = data.images[indices].to(self.device)
            losses.append(flow_matching_loss(self.model, images, conditions, generator).item() * len(indices))
        loss = sum(losses) / len(data)
        return {"score": -loss, "val_loss": loss}

    def save(self, out: Path) -> None:
        save_generator(self.model, out)


def train_generator(pairs_file: Path, model: str, out: Path, options: TrainOptions,
                    config: GeneratorConfig | None = None, resume: bool = False, workers: int | None = None,
                    on_event: Callable[[TrainEvent], None] | None = None,
                    on_load: Callable[[int, int], None] | None = None) -> FitResult:
    """Train a generator for the space of `model` (any model spec) on the images of `pairs_file`.

    Raises:
        TrainingDataError: no pair has an image.
        TrainingStateError: see `fit`.
        ModelNotFoundError, ModelLoadError: a bad `model`.
    """
    from retrieval.encoders.factory import create_encoder

    encoder = create_encoder(model, device=options.device)
    config = replace(config or GeneratorConfig(cond_dim=encoder.dim),
                     cond_dim=encoder.dim, trained_on={"model": model, "fingerprint": encoder.identity.fingerprint})
    prepared = prepare_pairs(pairs_file, ("train", "val"), encoder.inputs, need=("image",), decode=("image", "audio"),
                             workers=workers, progress=on_load)
    train, val = split_validation(prepared, options.val_fraction, options.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        network = FlowUNet(config)
    signature = {"kind": "generator", "base": encoder.identity.fingerprint, "config": config.to_json(),
                 "pairs": prepared.fingerprint}
    task = GeneratorTask(network, generator_data(train, encoder, config.image_size),
                         generator_data(val, encoder, config.image_size), encoder.device, signature)
    return fit(task, options, out, resume, on_event)
