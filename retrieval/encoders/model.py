"""One object per model: text, images and audio in, L2-normalised float32 (n, dim) arrays out."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from index.manifest import EncoderIdentity
from retrieval.encoders.audio_tower import AudioTower
from retrieval.encoders.config import ImagePreprocess, ModelConfig, ModelInputs
from retrieval.encoders.frontend import compute_log_mel, mel_filterbank, split_windows
from retrieval.media.audio import resample
from retrieval.media.images import fit_square, to_rgb


@dataclass(frozen=True)
class AudioEmbedding:
    """One clip: its pooled vector, one vector per window, and each window's time range."""

    pooled: np.ndarray  # (dim,)
    windows: np.ndarray  # (w, dim)
    ranges: list[tuple[float, float]]


class Encoder:
    """Image and text towers of an open_clip model plus our audio tower, in one shared space."""

    def __init__(
        self,
        spec: str,
        config: ModelConfig,
        clip_model: torch.nn.Module,
        tokenizer,
        audio_tower: AudioTower,
        image_preprocess: ImagePreprocess,
        fingerprint: str,
        device: torch.device,
        batch_size: int = 64,
    ) -> None:
        self.spec = spec
        self.config = config
        # channels_last: ResNet-style convolutions run 1.3-1.5x faster on CPU (measured); a ViT has
        # one convolution and does not mind.
        self.clip_model = clip_model.to(device).eval()
        self.clip_model.visual.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            from retrieval.encoders.patch_embed import use_patch_linear

            use_patch_linear(self.clip_model)
        self.tokenizer = tokenizer
        self.audio_tower = audio_tower.to(device).eval().to(memory_format=torch.channels_last)
        self.image_preprocess = image_preprocess
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self._mean = torch.tensor(image_preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(image_preprocess.std, device=device).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    @property
    def identity(self) -> EncoderIdentity:
        return EncoderIdentity(self.spec, self.fingerprint, self.dim)

    @property
    def inputs(self) -> ModelInputs:
        front_end = self.config.audio.front_end
        return ModelInputs(self.image_preprocess.size, front_end, mel_filterbank(front_end))

    def _precision(self):
        """bfloat16 autocast for the image and text towers on a GPU (about 8x the float32 rate on
        an H100/H200, cosines within ~1e-3 of float32); float32 on the CPU, where bf16 is slower."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _empty(self) -> np.ndarray:
        return np.empty((0, self.dim), dtype=np.float32)

    @staticmethod
    def _to_numpy(vectors: torch.Tensor) -> np.ndarray:
        return F.normalize(vectors.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    # ---------------------------------------------------------------- text

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim). Texts longer than the context are truncated by the tokenizer."""
        if not texts:
            return self._empty()
        out = []
        for start in range(0, len(texts), self.batch_size * 4):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size * 4])).to(self.device)
            with self._precision():
                out.append(self._to_numpy(self.clip_model.encode_text(tokens)))
        return np.concatenate(out)

    # ---------------------------------------------------------------- images

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images of any mode and size -> (n, dim), with open_clip's resize and centre crop."""
        if not images:
            return self._empty()
        size = self.image_preprocess.size
        return self.encode_pixels(np.stack([fit_square(to_rgb(image), size) for image in images]))

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Square images (n, S, S, 3) in 0..255, already resized and cropped -> (n, dim).

        A uint8 array, or a tensor of any dtype (pixels decoded on the GPU stay there).
        """
        if len(pixels) == 0:
            return self._empty()
        out = []
        for start in range(0, len(pixels), self.batch_size):
            if isinstance(pixels, torch.Tensor):
                batch = pixels[start : start + self.batch_size]
            else:
                chunk = np.ascontiguousarray(pixels[start : start + self.batch_size])
                # Arrays decoded from a pipe or PIL may be read-only; torch wants writable memory.
                batch = torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy())
            x = batch.to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S); never the caller's
            x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
            with self._precision():
                out.append(self._to_numpy(self.clip_model.encode_image(x)))
        return np.concatenate(out)

    # ---------------------------------------------------------------- audio

    def encode_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """Mono waveforms -> pooled (n, dim). `sample_rate` defaults to the front end's rate."""
        front_end = self.config.audio.front_end
        rate = sample_rate or front_end.sample_rate
        log_mels, durations = [], []
        for wave in waveforms:
            wave = resample(np.asarray(wave, dtype=np.float32).reshape(-1), rate, front_end.sample_rate)
            log_mels.append(compute_log_mel(wave, front_end))
            durations.append(len(wave) / front_end.sample_rate)
        embeddings = self.embed_log_mels(log_mels, durations)
        return np.stack([e.pooled for e in embeddings]) if embeddings else self._empty()

    @torch.inference_mode()
    def embed_log_mels(self, log_mels: Sequence[np.ndarray], durations: Sequence[float]) -> list[AudioEmbedding]:
        """Log-mel features (n_mels, T) of whole clips -> per-window and pooled vectors per clip.

        Windows of all clips are batched together; the pooled vector is the normalised mean of a
        clip's window vectors.
        """
        front_end = self.config.audio.front_end
        split = [split_windows(mel, duration, front_end) for mel, duration in zip(log_mels, durations, strict=True)]
        if not split:
            return []
        features = np.concatenate([w.features for w in split])  # (W, n_mels, frames)
        lengths = np.concatenate([w.lengths for w in split])  # (W,)
        vectors = []
        for start in range(0, len(features), self.batch_size):
            x = torch.from_numpy(features[start : start + self.batch_size]).to(self.device)
            n = torch.from_numpy(lengths[start : start + self.batch_size]).to(self.device)
            vectors.append(self._to_numpy(self.audio_tower(x, n)))
        all_windows = np.concatenate(vectors)  # (W, dim)
        result, offset = [], 0
        for windows in split:
            clip = all_windows[offset : offset + len(windows.ranges)]
            offset += len(windows.ranges)
            pooled = clip.mean(axis=0)
            pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
            result.append(AudioEmbedding(pooled.astype(np.float32), clip, windows.ranges))
        return result
