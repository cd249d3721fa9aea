"""What the engine needs of a generator: draw `count` pictures for a query, seeded.

Two kinds stand behind it: xmodal's own flow-matching network, conditioned on the query's vector
of the shared space (so text, sound and picture queries alike), and an optional diffusers pipeline
(`generation.diffusers_adapter`), which may accept only text.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Drawer(Protocol):
    name: str  # shown in provenance: which generator drew a picture
    fingerprint: str  # of its weights: part of a generated picture's id

    def can_draw(self, kind: str) -> bool:
        """Whether queries of this kind ("text", "image", "audio", "item") can be drawn."""

    def draw(self, vector: np.ndarray, text: str | None, count: int, seed: int) -> np.ndarray:
        """(count, S, S, 3) uint8 pictures for the unit query vector (D,) and, for text queries,
        its words; row i depends only on (seed, i)."""


class FlowDrawer:
    """xmodal's own generator (`generation.network.FlowUNet`): any query kind, by its vector."""

    def __init__(self, model, name: str, fingerprint: str, steps: int | None = None,
                 guidance: float | None = None) -> None:
        self.model = model
        self.name = name
        self.fingerprint = fingerprint
        self.steps = steps
        self.guidance = guidance

    @property
    def config(self):
        return self.model.config

    def can_draw(self, kind: str) -> bool:
        return True

    def draw(self, vector: np.ndarray, text: str | None, count: int, seed: int) -> np.ndarray:
        import torch

        from generation.flow import sample

        conditions = torch.from_numpy(np.repeat(np.asarray(vector, dtype=np.float32).reshape(1, -1), count, axis=0))
        return sample(self.model, conditions, seed, self.steps, self.guidance)
