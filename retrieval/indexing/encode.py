"""Decoded files waiting for the encoder, batched per modality, turned into the vectors the store
keeps: one per image; for a sound, its pooled vector plus one per window when it has several.

Both indexing paths use it: the local pipeline hands each file's vectors to the writer, a Ray
actor (retrieval/indexing/distributed.py) sends them back to the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from index.records import NewVector
from retrieval.indexing.prepare import Prepared

if TYPE_CHECKING:
    from retrieval.encoders.model import Encoder

EmitFunction = Callable[[Prepared, list[NewVector]], None]  # (decoded file, its vectors)


def stack_pixels(pixels: list):
    """(n, S, S, 3): uint8 arrays from the worker pool, tensors decoded on the GPU, or both mixed."""
    if all(isinstance(p, np.ndarray) for p in pixels):
        return np.stack(pixels)
    import torch

    device = next(p.device for p in pixels if isinstance(p, torch.Tensor))
    # Tensors from the GPU road are float already: a no-op `as_tensor` each still costs ~20 us.
    return torch.stack([p if isinstance(p, torch.Tensor) and p.dtype == torch.float32 and p.device == device
                        else torch.as_tensor(p, device=device, dtype=torch.float32) for p in pixels])


class EncodeBatcher:
    """Collects decoded files and encodes them `batch_size` at a time (images, or sound windows)."""

    def __init__(self, encoder: Encoder, batch_size: int, emit: EmitFunction) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.emit = emit
        self.images: list[Prepared] = []
        self.sounds: list[Prepared] = []
        self.sound_windows = 0

    def add(self, prepared: Prepared) -> None:
        if prepared.info.modality == "image":
            self.images.append(prepared)
            if len(self.images) >= self.batch_size:
                self.encode_images()
        else:
            self.sounds.append(prepared)
            frames_per_window = self.encoder.config.audio.front_end.window_hop_frames
            self.sound_windows += 1 + prepared.log_mel.shape[1] // max(1, frames_per_window)
            if self.sound_windows >= self.batch_size:
                self.encode_sounds()

    def encode_images(self) -> None:
        if not self.images:
            return
        vectors = self.encoder.encode_pixels(stack_pixels([p.pixels for p in self.images]))  # (n, dim)
        images, self.images = self.images, []
        for prepared, vector in zip(images, vectors, strict=True):
            self.emit(prepared, [NewVector(vector)])

    def encode_sounds(self) -> None:
        if not self.sounds:
            return
        embeddings = self.encoder.embed_log_mels([p.log_mel for p in self.sounds],
                                                 [p.info.duration for p in self.sounds])
        sounds, self.sounds, self.sound_windows = self.sounds, [], 0
        for prepared, embedding in zip(sounds, embeddings, strict=True):
            duration = prepared.info.duration
            vectors = [NewVector(embedding.pooled, "item", 0.0, duration)]
            if len(embedding.ranges) > 1:
                windows = zip(embedding.windows, embedding.ranges, strict=True)
                vectors += [NewVector(v, "window", start, end) for v, (start, end) in windows]
            self.emit(prepared, vectors)

    def encode_held(self) -> None:
        """Encode every file held back for a full batch, now: at the end of a run, and whenever the
        decoders have nothing ready (time that would be spent waiting goes to encoding, and the
        last few images before a folder of sounds are not left for the end, when nothing else
        would overlap with them)."""
        self.encode_images()
        self.encode_sounds()
