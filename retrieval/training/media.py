"""Decode the media of a pairs file once, in parallel, through the same hardened loaders as indexing.

Training and evaluation see exactly the inputs the index sees (same resize and crop, same log-mel
front end). A file that cannot be decoded drops its pair, with the reason kept for the report,
instead of failing the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.encoders.config import ModelInputs
from retrieval.indexing.prepare import DECODED, NOT_MEDIA, Task
from retrieval.media.limits import MediaLimits
from retrieval.training.pairs import Pair


@dataclass
class LoadedMedia:
    pixels: dict[Path, np.ndarray] = field(default_factory=dict)  # (S, S, 3) uint8
    log_mels: dict[Path, np.ndarray] = field(default_factory=dict)  # (n_mels, T) float32
    durations: dict[Path, float] = field(default_factory=dict)
    failures: dict[Path, str] = field(default_factory=dict)


def load_media(
    paths: Iterable[tuple[Path, str]],
    inputs: ModelInputs,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedMedia:
    """Decode `(path, expected modality)` pairs into model inputs; failures are recorded, not raised."""
    from retrieval.indexing.workers import DecodePool

    expected = dict(paths)
    loaded = LoadedMedia()
    pool = DecodePool(workers or max(1, os.cpu_count() or 1), inputs, MediaLimits())
    for done, prepared in enumerate(pool.run(Task(str(path)) for path in expected), start=1):
        path = Path(prepared.path)
        if prepared.status == DECODED and prepared.info.modality != expected[path]:
            loaded.failures[path] = f"expected {expected[path]}, found {prepared.info.modality}"
        elif prepared.status == DECODED and prepared.pixels is not None:
            loaded.pixels[path] = prepared.pixels
        elif prepared.status == DECODED:
            loaded.log_mels[path] = prepared.log_mel
            loaded.durations[path] = float(prepared.info.duration)
        elif prepared.status == NOT_MEDIA:
            loaded.failures[path] = "not an image or a sound"
        else:
            loaded.failures[path] = str(prepared.error)
        if progress is not None:
            progress(done, len(expected))
    return loaded


def media_of(pairs: Sequence[Pair], need_images: bool, need_audio: bool) -> list[tuple[Path, str]]:
    wanted: dict[Path, str] = {}
    for pair in pairs:
        if need_images and pair.image is not None:
            wanted[pair.image] = "image"
        if need_audio and pair.audio is not None:
            wanted[pair.audio] = "audio"
    return list(wanted.items())


def usable(pairs: Sequence[Pair], media: LoadedMedia) -> tuple[list[Pair], list[str]]:
    """Pairs whose media all decoded, and one line per dropped pair saying why."""
    kept, dropped = [], []
    for pair in pairs:
        bad = [p for p in (pair.image, pair.audio) if p is not None and p in media.failures]
        if bad:
            dropped.append(f"{pair.id}: {bad[0]}: {media.failures[bad[0]]}")
        else:
            kept.append(pair)
    return kept, dropped
