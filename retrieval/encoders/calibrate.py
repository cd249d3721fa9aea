"""Data-independent BatchNorm calibration of untrained towers.

Freshly initialised BatchNorm layers hold running statistics of mean 0 and variance 1, which do
not describe the real activations; in eval mode a random ResNet then maps every input to nearly
the same direction (cosine > 0.9999 between unrelated images), so even exact-duplicate search
would be decided by rounding noise. Running seeded synthetic inputs through the towers in train
mode sets those statistics to the activations' real scale, which spreads the outputs (LSUV-style
initialisation). Training later overwrites all of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.encoders.config import AudioFrontEnd, ImagePreprocess
from retrieval.encoders.frontend import compute_log_mel, split_windows

_BATCHES = 4
_BATCH = 32


def _reset_batch_norm(module: nn.Module) -> bool:
    found = False
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over all calibration batches
            found = True
    return found


def _synthetic_images(generator: torch.Generator, preprocess: ImagePreprocess) -> torch.Tensor:
    """Smooth random colour fields with pixel noise, normalised like real inputs: (B, 3, S, S)."""
    size = preprocess.size
    coarse = torch.rand(_BATCH, 3, 4, 4, generator=generator)
    pixels = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pixels = (pixels + 0.1 * torch.randn(_BATCH, 3, size, size, generator=generator)).clamp(0, 1)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _synthetic_sounds(rng: np.random.Generator, front_end: AudioFrontEnd) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel windows of random tones over noise at random loudness: (B, n_mels, T), lengths (B,)."""
    rate = front_end.sample_rate
    features, lengths = [], []
    for _ in range(_BATCH):
        seconds = float(rng.uniform(0.3, front_end.window_seconds))
        t = np.arange(int(seconds * rate)) / rate
        tone = sum(np.sin(2 * np.pi * rng.uniform(80, 4000) * t) for _ in range(int(rng.integers(1, 4))))
        wave = (rng.uniform(0.01, 0.5) * tone + rng.uniform(0, 0.05) * rng.standard_normal(len(t)))
        windows = split_windows(compute_log_mel(wave.astype(np.float32), front_end), seconds, front_end)
        features.append(windows.features[0])
        lengths.append(windows.lengths[0])
    return torch.from_numpy(np.stack(features)), torch.tensor(lengths)


@torch.no_grad()
def calibrate_image_tower(visual: nn.Module, preprocess: ImagePreprocess, seed: int) -> None:
    if not _reset_batch_norm(visual):
        return  # a ViT has no BatchNorm: its LayerNorms already normalise
    generator = torch.Generator().manual_seed(seed)
    visual.train()
    for _ in range(_BATCHES):
        visual(_synthetic_images(generator, preprocess))
    visual.eval()


@torch.no_grad()
def calibrate_audio_tower(tower: nn.Module, front_end: AudioFrontEnd, seed: int) -> None:
    if not _reset_batch_norm(tower):
        return
    rng = np.random.default_rng(seed)
    tower.train()
    for _ in range(_BATCHES):
        tower(*_synthetic_sounds(rng, front_end))
    tower.eval()
