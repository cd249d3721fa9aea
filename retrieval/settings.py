"""Settings shared by the CLI and the API, from arguments first, then environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.media.limits import MediaLimits


def default_db_dir() -> Path:
    """`$XMODAL_DB`, else `$XDG_DATA_HOME/xmodal/default` (usually ~/.local/share/xmodal/default)."""
    if os.environ.get("XMODAL_DB"):
        return Path(os.environ["XMODAL_DB"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "xmodal" / "default"


@dataclass(frozen=True)
class Settings:
    db_dir: Path = field(default_factory=default_db_dir)
    model: str | None = None  # None: the model the database was built with (or the default for a new one)
    device: str | None = None  # None: $XMODAL_DEVICE or auto (CUDA when present)
    workers: int | None = None  # None: one per core but one
    batch_size: int = 64
    limits: MediaLimits = field(default_factory=MediaLimits)


def load_settings(db: Path | None = None, model: str | None = None, **overrides) -> Settings:
    """Settings with explicit values taking precedence over `XMODAL_*` environment variables."""
    workers = overrides.pop("workers", None)
    if workers is None and os.environ.get("XMODAL_WORKERS"):
        workers = int(os.environ["XMODAL_WORKERS"])
    return Settings(
        db_dir=Path(db).expanduser() if db else default_db_dir(),
        model=model or os.environ.get("XMODAL_MODEL") or None,
        workers=workers,
        **overrides,
    )
