"""A diffusers pipeline as the fallback generator, for users with real weights (extra `[diffusers]`).

Two kinds of pipeline fit:

- **Stable unCLIP** (`StableUnCLIPImg2ImgPipeline`, e.g. stabilityai/stable-diffusion-2-1-unclip):
  it accepts a CLIP image embedding, so every query kind is drawn from its vector, as with
  xmodal's own generator. The collection's model must be the CLIP that the pipeline's image
  encoder is (same dimension, same space): an open_clip `ViT-H-14:laion2b_s32b_b79k` collection for
  stable-diffusion-2-1-unclip, for example.
- **Text-to-image** pipelines (SD-Turbo, Stable Diffusion): they draw from the query's words, so
  only text queries get a picture.

The spec is `diffusers:SOURCE[?steps=N&guidance=W]`, where SOURCE is a local pipeline directory
or a hub id. Only `.safetensors` weights are loaded (`use_safetensors=True`): a pipeline that
ships only pickles is refused. Verification stays the engine's: whatever the pipeline draws is
embedded by the collection's image tower and the candidate closest to the query is kept.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from generation.errors import GeneratorLoadError

PREFIX = "diffusers:"


@dataclass(frozen=True)
class DiffusersSpec:
    source: str  # a local directory or a hub id
    steps: int | None = None  # None: the pipeline's own default
    guidance: float | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().is_dir()


def is_diffusers_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse_spec(spec: str) -> DiffusersSpec:
    """`diffusers:SOURCE[?steps=N&guidance=W]` -> its parts.

    Raises:
        GeneratorLoadError: not such a spec, or a malformed option.
    """
    if not is_diffusers_spec(spec):
        raise GeneratorLoadError(f"{spec!r} is not a diffusers generator spec (diffusers:SOURCE)")
    source, _, query = spec[len(PREFIX):].partition("?")
    if not source:
        raise GeneratorLoadError("the diffusers generator spec names no pipeline: diffusers:SOURCE")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(options) - {"steps", "guidance"}
    if unknown:
        raise GeneratorLoadError(f"unknown diffusers option(s) {', '.join(sorted(unknown))}: use steps and guidance")
    try:
        steps = int(options["steps"][-1]) if "steps" in options else None
        guidance = float(options["guidance"][-1]) if "guidance" in options else None
    except ValueError as error:
        raise GeneratorLoadError(f"a diffusers option is not a number: {error}") from None
    if steps is not None and steps < 1:
        raise GeneratorLoadError("steps must be at least 1")
    if guidance is not None and not math.isfinite(guidance):
        raise GeneratorLoadError("guidance must be a finite number")
    return DiffusersSpec(source, steps, guidance)


class DiffusersDrawer:
    """Draws with a loaded diffusers pipeline; see the module docstring for what fits."""

    def __init__(self, pipeline, spec: DiffusersSpec, name: str, fingerprint: str) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.name = name
        self.fingerprint = fingerprint
        parameters = inspect.signature(pipeline.__call__).parameters
        self.takes_vectors = "image_embeds" in parameters
        if not self.takes_vectors and "prompt" not in parameters:
            raise GeneratorLoadError(f"{type(pipeline).__name__} takes neither image embeddings nor a prompt")
        # Our vectors are unit length; unCLIP expects CLIP embeddings at their natural length, which
        # its normaliser's statistics give: E|x|² = |mean|² + |std|².
        normaliser = getattr(pipeline, "image_normalizer", None)
        self.embed_scale = 1.0
        if self.takes_vectors and normaliser is not None:
            mean, std = normaliser.mean.detach().float(), normaliser.std.detach().float()
            self.embed_scale = float(math.sqrt(float((mean**2).sum() + (std**2).sum())))
        self.dim = int(normaliser.mean.shape[-1]) if self.takes_vectors and normaliser is not None else None

    def can_draw(self, kind: str) -> bool:
        return self.takes_vectors or kind == "text"

    def draw(self, vector: np.ndarray, text: str | None, count: int, seed: int) -> np.ndarray:
        """(count, H, W, 3) uint8; raises GeneratorLoadError for a query it cannot draw."""
        import torch

        device = self.pipeline.device
        # One generator per picture, seeded by (seed, row): candidate i is the same whatever `count` is.
        generators = [torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + row) for row in range(count)]
        options = {"num_images_per_prompt": count, "generator": generators, "output_type": "np"}
        if self.spec.steps is not None:
            options["num_inference_steps"] = self.spec.steps
        if self.spec.guidance is not None:
            options["guidance_scale"] = self.spec.guidance
        if self.takes_vectors:
            vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            if self.dim is not None and vector.shape[1] != self.dim:
                raise GeneratorLoadError(f"the pipeline takes {self.dim}-dimensional image embeddings; this "
                                         f"collection's model makes {vector.shape[1]}-dimensional vectors")
            embeds = torch.from_numpy(vector * self.embed_scale).to(device, self.pipeline.dtype)
            output = self.pipeline(prompt=text or "", image_embeds=embeds, **options)
        else:
            if text is None:
                raise GeneratorLoadError(f"{self.name} draws from words only; this query has none")
            output = self.pipeline(prompt=text, **options)
        images = np.asarray(output.images, dtype=np.float32)  # (count, H, W, 3) in [0, 1]
        return (images.clip(0, 1) * 255).round().astype(np.uint8)


def load_diffusers_drawer(spec: str, device: str = "cpu", local_only: bool = False) -> DiffusersDrawer:
    """Load the pipeline a `diffusers:` spec names (from disk or the hub's cache when `local_only`).

    Raises:
        GeneratorLoadError: diffusers is not installed, or the pipeline is missing, offers no
            safetensors weights, or cannot be loaded.
    """
    parsed = parse_spec(spec)
    try:
        import diffusers
        import torch
        import transformers
        from diffusers import DiffusionPipeline
    except ImportError:
        raise GeneratorLoadError("the diffusers generator needs the extra: pip install 'xmodal[diffusers]'") from None
    for library in (diffusers, transformers):  # their per-component progress bars and notices are not ours to show
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    source = str(Path(parsed.source).expanduser()) if parsed.is_local else parsed.source
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, use_safetensors=True, dtype=dtype,
                                                     local_files_only=local_only or parsed.is_local)
    except Exception as error:  # diffusers raises OSError, ValueError, EnvironmentError... all one story here
        hint = " (offline: only pipelines already in the Hugging Face cache load)" if local_only else ""
        raise GeneratorLoadError(f"cannot load the diffusers pipeline {parsed.source}{hint}: {error}") from None
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return DiffusersDrawer(pipeline, parsed, f"diffusers:{parsed.source}", _fingerprint(pipeline, parsed))


def _fingerprint(pipeline, spec: DiffusersSpec) -> str:
    """A short hash of the sampling options and of every component's type and weights: their names,
    shapes and first values (hashing all of a multi-GB pipeline would cost seconds at each start)."""
    digest = hashlib.sha256(repr((spec.steps, spec.guidance)).encode())
    for name, component in sorted(pipeline.components.items(), key=lambda pair: pair[0]):
        digest.update(f"{name}:{type(component).__name__}".encode())
        if hasattr(component, "state_dict"):
            for key, tensor in component.state_dict().items():
                digest.update(f"{key}{tuple(tensor.shape)}{float(tensor.flatten()[:8].float().sum())}".encode())
    return digest.hexdigest()[:32]
