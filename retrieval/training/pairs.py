"""Pairs files: one JSON object per line naming an image, a sound and/or captions of one thing.

    {"image": "images/a.png", "audio": "audio/a.wav", "captions": ["a red circle"],
     "split": "train", "concept": "red circle", "attributes": {"colour": "red", ...}}

Paths are relative to the pairs file (or absolute). `split` defaults to "train". `concept` names what the item
shows; items that share it are the same thing to the loss (not negatives of each other) and to the
evaluation (a hit). Without it, the attributes, or else the first caption, stand for the concept;
an item with neither is its own concept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import TrainingDataError

SPLITS = ("train", "val", "test", "heldout")


@dataclass(frozen=True)
class Pair:
    id: str
    split: str
    concept: str
    image: Path | None = None
    audio: Path | None = None
    captions: tuple[str, ...] = ()
    attributes: dict = field(default_factory=dict, compare=False, hash=False)


def normalise_caption(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _concept(record: dict, captions: tuple[str, ...], fallback: str) -> str:
    if record.get("concept"):
        return str(record["concept"])
    if record.get("attributes"):
        return json.dumps(record["attributes"], sort_keys=True)
    if captions:
        return normalise_caption(captions[0])
    return fallback


def _parse(line: str, number: int, root: Path, where: str) -> Pair:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TrainingDataError(f"{where}:{number}: not JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise TrainingDataError(f"{where}:{number}: expected a JSON object")
    captions = record.get("captions", record.get("caption", ()))
    if isinstance(captions, str):
        captions = (captions,)
    if not isinstance(captions, list | tuple) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise TrainingDataError(f"{where}:{number}: captions must be a non-empty string or a list of them")
    captions = tuple(captions)
    paths = {}
    for key in ("image", "audio"):
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise TrainingDataError(f"{where}:{number}: {key} must be a path string")
        paths[key] = (root / value).resolve()
    if sum((bool(captions), "image" in paths, "audio" in paths)) < 2:
        raise TrainingDataError(f"{where}:{number}: a pair needs two of image, audio and captions")
    split = record.get("split", "train")
    if split not in SPLITS:
        raise TrainingDataError(f"{where}:{number}: split {split!r} is not one of {', '.join(SPLITS)}")
    item_id = str(record.get("id", number))
    attributes = record.get("attributes") or {}
    return Pair(item_id, split, _concept(record, captions, f"#{item_id}"), paths.get("image"), paths.get("audio"),
                captions, attributes)


def load_pairs(path: Path, splits: Sequence[str] | None = None) -> list[Pair]:
    """The pairs of `path` (all, or only those in `splits`), in file order.

    Raises:
        TrainingDataError: a missing file, a malformed line (named by number), duplicate ids.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TrainingDataError(f"no pairs file at {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingDataError(f"cannot read {path}: {error}") from None
    pairs, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        pair = _parse(line, number, path.parent, path.name)
        if pair.id in seen:
            raise TrainingDataError(f"{path.name}:{number}: duplicate id {pair.id!r}")
        seen.add(pair.id)
        if splits is None or pair.split in splits:
            pairs.append(pair)
    return pairs


def concept_ids(pairs: Sequence[Pair]) -> list[int]:
    """One integer per pair; equal integers mean the same concept."""
    index: dict[str, int] = {}
    return [index.setdefault(pair.concept, len(index)) for pair in pairs]
