"""Verified generation: draw several candidates from the generator for a query vector, embed each
with the image tower, keep the one closest to the query and say how close it is.

The generator only turns a vector into pixels; whether a picture shows what was asked is judged
here, in the same space the search uses, so a text query and a sound query are checked alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from generation.drawer import Drawer
    from retrieval.encoders.model import Encoder

DEFAULT_CANDIDATES = 4


@dataclass(frozen=True)
class Generated:
    pixels: np.ndarray  # (S, S, 3) uint8: the kept candidate
    score: float  # cosine between the kept candidate's image embedding and the query vector
    seed: int
    candidate: int  # which of the candidates was kept
    candidate_scores: tuple[float, ...]
    millis: float  # sampling plus verification
    vector: np.ndarray  # (D,) the kept picture's image embedding, as verification computed it

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)


def _to_encoder_size(pixels: np.ndarray, side: int) -> np.ndarray:
    """(N, S, S, 3) uint8 resized to the image tower's square input (bicubic, as indexing resizes)."""
    if pixels.shape[1] == side:
        return pixels
    return np.stack([np.asarray(Image.fromarray(p).resize((side, side), Image.Resampling.BICUBIC)) for p in pixels])


def generate_verified(drawer: Drawer, encoder: Encoder, query: np.ndarray, candidates: int = DEFAULT_CANDIDATES,
                      seed: int = 0, text: str | None = None) -> Generated:
    """The best of `candidates` pictures drawn for the unit query vector (dim,) (and, for a text
    query, its words), by cosine to the query vector."""
    if candidates < 1:
        raise ValueError("candidates must be at least 1")
    started = time.perf_counter()
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    pixels = drawer.draw(query, text, candidates, seed)  # (C, S, S, 3)
    vectors = encoder.encode_pixels(_to_encoder_size(pixels, encoder.inputs.image_size))  # (C, D)
    scores = vectors @ query  # (C,)
    best = int(np.argmax(scores))
    return Generated(pixels[best], float(scores[best]), seed, best, tuple(float(s) for s in scores),
                     (time.perf_counter() - started) * 1000, vectors[best])
