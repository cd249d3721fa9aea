"""The manifest of an index generation: which encoder built it, from which store version, and the
checksum of every index file, so a torn or stale cache is recognised and rebuilt."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from index.atomic import write_bytes_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder made the vectors. `fingerprint` changes whenever the weights change."""

    spec: str
    fingerprint: str
    dim: int


@dataclass(frozen=True)
class IndexFile:
    modality: str
    spec: str
    file: str
    count: int
    sha256: str
    bytes: int
    search_parameter: str = ""  # the tuned effort of an approximate index ("nprobe=8"); "" when exact
    recall: float | None = None  # recall@10 against exact search measured when it was tuned
    tuned_count: int = 0  # vectors it held when tuned; it is tuned again once it has doubled


@dataclass(frozen=True)
class Manifest:
    encoder: EncoderIdentity
    generation: int
    store_version: int
    indexes: dict[str, IndexFile]
    format_version: int = FORMAT_VERSION
    written_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format {data.get('format_version')!r}")
        return cls(
            encoder=EncoderIdentity(**data["encoder"]),
            generation=int(data["generation"]),
            store_version=int(data["store_version"]),
            indexes={name: IndexFile(**entry) for name, entry in data["indexes"].items()},
            format_version=data["format_version"],
            written_at=float(data["written_at"]),
        )


def load_manifest(db_dir: Path) -> Manifest | None:
    """The current manifest, or None when there is none or it cannot be read (callers rebuild)."""
    path = Path(db_dir) / MANIFEST_NAME
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_manifest(db_dir: Path, manifest: Manifest) -> None:
    write_bytes_atomic(Path(db_dir) / MANIFEST_NAME, manifest.to_json().encode())
