"""Generated images: what the engine draws when nothing in the collection matches, kept under the
collection directory with their provenance and never mixed into the searchable collection unless
the user keeps one (`--keep-generated`): then it is indexed from where it lies, and its results say
"generated".

    DB/generated/<id>.png     the picture (the verified best of several candidates)
    DB/generated/<id>.json    query kind and text (or file name), seed, embedding model, generator,
                              similarity to the query, time; "generated": true

The id is a hash of what determines the picture (query vector, seed, generator), so asking the
same thing twice finds the picture already drawn instead of drawing it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from index.atomic import write_bytes_atomic

FOLDER = "generated"
_ID = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class GeneratedImage:
    id: str
    query_kind: str
    query_value: str
    seed: int
    model: str
    generator: str
    score: float  # cosine of the picture's image embedding to the query vector
    created: float
    generated: bool = True  # always: the label every client shows

    def to_dict(self) -> dict:
        return asdict(self)


def generated_prefix(db_dir: Path) -> str:
    """How the paths of kept pictures (`xmodal search --keep-generated`) begin in the store."""
    return os.path.join(os.path.abspath(Path(db_dir).expanduser() / FOLDER), "")


def generated_id(query_vector: np.ndarray, seed: int, generator_fingerprint: str) -> str:
    """Names the picture by what draws it: the query vector (not a file name two uploads may share),
    the seed and the generator's weights."""
    digest = hashlib.sha256(np.round(np.asarray(query_vector, dtype=np.float32), 5).tobytes())
    digest.update(f"|{seed}|{generator_fingerprint}".encode())
    return digest.hexdigest()[:24]


class GeneratedStore:
    """The generated pictures of one collection directory."""

    def __init__(self, db_dir: Path) -> None:
        self.folder = Path(db_dir) / FOLDER

    def find(self, image_id: str) -> tuple[Path, GeneratedImage] | None:
        """(picture path, provenance) of a generated image; None for an unknown or malformed id."""
        if not _ID.fullmatch(image_id):
            return None
        picture, record = self.folder / f"{image_id}.png", self.folder / f"{image_id}.json"
        try:
            provenance = GeneratedImage(**json.loads(record.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return (picture, provenance) if picture.is_file() else None

    def save(self, pixels: np.ndarray, provenance: GeneratedImage) -> Path:
        """Write the picture, then its provenance (a record never points at a missing picture).

        Raises:
            OSError, StorageFullError: the collection directory cannot be written.
        """
        import io

        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        picture = self.folder / f"{provenance.id}.png"
        write_bytes_atomic(picture, buffer.getvalue())
        record = json.dumps(provenance.to_dict(), indent=2) + "\n"
        write_bytes_atomic(self.folder / f"{provenance.id}.json", record.encode())
        return picture


def new_provenance(image_id: str, query_kind: str, query_value: str, seed: int, model: str, generator: str,
                   score: float) -> GeneratedImage:
    return GeneratedImage(image_id, query_kind, query_value, seed, model, generator, round(score, 6), time.time())
