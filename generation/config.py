"""The generator's configuration: one dataclass, stored as JSON beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class GeneratorConfig:
    """A flow-matching UNet that draws `image_size`² RGB images from a condition vector."""

    cond_dim: int  # the dimension of the shared embedding space it is conditioned on
    # The defaults are the shipped starter generator's: 64 px pictures worked on at 32, 16, 8 and 4 px.
    image_size: int = 64
    channels: int = 32  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)  # one level per entry; all but the last halve the size
    patch: int = 2  # pixels per side folded into channels before the first level (space-to-depth)
    embed_dim: int = 128  # width of the time + condition embedding that modulates every block
    groups: int = 8  # GroupNorm groups
    cond_dropout: float = 0.1  # share of training rows drawn without condition (for guidance)
    guidance: float = 3.0  # default classifier-free guidance weight when sampling
    steps: int = 20  # default Euler steps when sampling
    trained_on: dict = field(default_factory=dict)  # the embedding model's spec and fingerprint

    def __post_init__(self) -> None:
        if self.image_size % (self.patch * 2 ** (len(self.channel_mults) - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch} and the "
                             f"{len(self.channel_mults) - 1} halvings of channel_mults {self.channel_mults}")
        if any(self.channels * mult % self.groups for mult in self.channel_mults):
            raise ValueError(f"every level's width must be divisible by groups={self.groups}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GeneratorConfig:
        """Raises ValueError (with the field's name) for an unknown or malformed field."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("the generator config is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown generator config field(s): {', '.join(sorted(unknown))}")
        # Generators saved before patches existed worked on whole pixels.
        values.setdefault("patch", 1)
        if "channel_mults" in values:
            values["channel_mults"] = tuple(values["channel_mults"])
        return cls(**values)
