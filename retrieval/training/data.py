"""From a pairs file to the decoded items one training or evaluation run uses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrieval.encoders.config import ModelInputs
from retrieval.errors import TrainingDataError
from retrieval.training.media import LoadedMedia, load_media, media_of, usable
from retrieval.training.pairs import Pair, concept_ids, load_pairs

# Below this many training items there is nothing to spare for validation: validate on them.
MIN_ITEMS_FOR_VALIDATION = 40


@dataclass(frozen=True)
class Prepared:
    pairs: list[Pair]
    concepts: list[int]  # equal ids: same concept (ids are shared across splits of one file)
    media: LoadedMedia
    dropped: list[str]  # one line per pair left out, with the reason
    fingerprint: str  # of the pairs file: a checkpoint of other data is not resumed

    def subset(self, keep: Sequence[int]) -> Prepared:
        return replace(self, pairs=[self.pairs[i] for i in keep], concepts=[self.concepts[i] for i in keep])


def _has(pair: Pair, need: str) -> bool:
    if need == "captions":
        return bool(pair.captions)
    if need == "image or captions":
        return pair.image is not None or bool(pair.captions)
    return getattr(pair, need) is not None


def prepare_pairs(pairs_file: Path, splits: Sequence[str], inputs: ModelInputs, need: Sequence[str],
                  decode: Sequence[str], workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Prepared:
    """Pairs of `splits` that have everything in `need`, with the media in `decode` decoded.

    Raises:
        TrainingDataError: the file is unusable or no pair of those splits has what is needed.
    """
    everything = load_pairs(pairs_file)
    ids = dict(zip((p.id for p in everything), concept_ids(everything), strict=True))
    pairs = [p for p in everything if p.split in splits and all(_has(p, n) for n in need)]
    if not pairs:
        wanted = f" with {' and '.join(need)}" if need else ""
        raise TrainingDataError(f"{pairs_file} has no pairs{wanted} in split {' or '.join(splits)}")
    media = load_media(media_of(pairs, "image" in decode, "audio" in decode), inputs, workers, progress)
    pairs, dropped = usable(pairs, media)
    if not pairs:
        raise TrainingDataError(f"no pair of {pairs_file} has media that decodes; first problem: {dropped[0]}")
    digest = hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest()[:16]
    return Prepared(pairs, [ids[p.id] for p in pairs], media, dropped, digest)


def split_validation(prepared: Prepared, fraction: float, seed: int) -> tuple[Prepared, Prepared]:
    """(train, validation): the file's "val" split when it has one, else a seeded share of "train"."""
    val = [i for i, p in enumerate(prepared.pairs) if p.split == "val"]
    train = [i for i, p in enumerate(prepared.pairs) if p.split == "train"]
    if not train:
        raise TrainingDataError("no pairs in the train split")
    if val:
        return prepared.subset(train), prepared.subset(val)
    if len(train) < MIN_ITEMS_FOR_VALIDATION or fraction <= 0:
        return prepared.subset(train), prepared.subset(train)
    order = np.random.default_rng(seed).permutation(len(train))
    count = max(2, round(len(train) * fraction))
    held = sorted(int(i) for i in order[:count])
    rest = sorted(int(i) for i in order[count:])
    return prepared.subset([train[i] for i in rest]), prepared.subset([train[i] for i in held])
