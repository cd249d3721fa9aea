"""Settings shared by the CLI and the API, from arguments first, then environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from index.backends import MilvusTarget, locate_db
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
    # None: the model's own generator (MODEL_DIR/generator); "none": no fallback pictures; a
    # generator directory; or "diffusers:SOURCE[?steps=N&guidance=W]" (extra [diffusers]).
    generator: str | None = None
    # `xmodal index --ray`: decode and encode on a Ray cluster ("auto", "ray://host:port", "local").
    ray_address: str | None = None
    # `xmodal index --index-spec`: a FAISS factory string that replaces the choice by size (kept in the
    # collection for later runs), "auto" to return to it, None to keep what the collection has.
    index_spec: str | None = None
    # Set from db_dir when it is `milvus://HOST:PORT/NAME` or `PATH.db`: the vectors are searched in
    # Milvus, and db_dir becomes the local ledger (store, writer lock, generated pictures). None: FAISS,
    # or the Milvus collection the ledger at db_dir names.
    milvus: MilvusTarget | None = None

    def __post_init__(self) -> None:
        # db_dir may be given any `--db` value (typer, XMODAL_DB, Settings(db_dir=...)): one meaning.
        if self.milvus is None:
            ledger, milvus = locate_db(self.db_dir)
            if milvus is not None:
                object.__setattr__(self, "db_dir", ledger)
                object.__setattr__(self, "milvus", milvus)


def load_settings(db: Path | str | None = None, model: str | None = None, **overrides) -> Settings:
    """Settings with explicit values taking precedence over `XMODAL_*` environment variables."""
    workers = overrides.pop("workers", None)
    if workers is None and os.environ.get("XMODAL_WORKERS"):
        workers = int(os.environ["XMODAL_WORKERS"])
    return Settings(
        db_dir=Path(db).expanduser() if db else default_db_dir(),
        model=model or os.environ.get("XMODAL_MODEL") or None,
        workers=workers,
        generator=overrides.pop("generator", None) or os.environ.get("XMODAL_GENERATOR") or None,
        **overrides,
    )


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServerSettingsError(ValueError):
    """Server options that would be unsafe or cannot work (an open address without an API key)."""


@dataclass(frozen=True)
class ServerSettings:
    """How `xmodal serve` listens and what it allows; read by the API from `XMODAL_*` variables."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    # Host headers accepted besides the loopback names (DNS rebinding defence). Empty: the bind
    # address when it is a specific one, any name when it is 0.0.0.0 (the API key guards it then);
    # "*" accepts any.
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # CORS stays closed unless origins are named
    max_upload_bytes: int = 25 * 1024 * 1024
    max_active_searches: int = 32  # more at once are answered 429 with Retry-After
    reload_seconds: float = 1.0  # how often to look for a new index generation
    batch_wait_ms: float = 0.0  # extra wait to gather concurrent text queries into one batch

    def checked(self) -> ServerSettings:
        """These settings, or an error saying what makes them unsafe or unusable.

        Raises:
            ServerSettingsError: a non-loopback address without an API key, a key too short, bad limits.
        """
        if self.host not in LOOPBACK_HOSTS and not self.api_key:
            raise ServerSettingsError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it could "
                f"search and download your files. Give --api-key KEY (or set XMODAL_API_KEY), or bind to 127.0.0.1")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ServerSettingsError("the API key must be at least 16 characters long")
        if self.max_upload_bytes < 1024:
            raise ServerSettingsError("the upload limit must be at least 1 KiB")
        if not 1 <= self.port <= 65535:
            raise ServerSettingsError(f"port must be between 1 and 65535, got {self.port}")
        return self

    def host_names(self) -> frozenset[str]:
        """Host header values (without port) the server answers to."""
        names = set(LOOPBACK_HOSTS) | {"[::1]"} | {name.lower() for name in self.allowed_hosts}
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(f"[{self.host}]" if ":" in self.host else self.host.lower())
        elif not self.allowed_hosts:
            names.add("*")  # listening everywhere under unknown names: the API key is the guard
        return frozenset(names)

    def to_environment(self) -> dict[str, str]:
        """The variables `load_server_settings` reads (how `xmodal serve` hands them to the app)."""
        values = {
            "XMODAL_HOST": self.host, "XMODAL_PORT": str(self.port),
            "XMODAL_ALLOWED_HOSTS": ",".join(self.allowed_hosts), "XMODAL_CORS_ORIGINS": ",".join(self.cors_origins),
            "XMODAL_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "XMODAL_MAX_ACTIVE_SEARCHES": str(self.max_active_searches),
            "XMODAL_RELOAD_SECONDS": str(self.reload_seconds), "XMODAL_BATCH_WAIT_MS": str(self.batch_wait_ms),
        }
        if self.api_key:
            values["XMODAL_API_KEY"] = self.api_key
        return values


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def load_server_settings(environ: dict[str, str] | None = None) -> ServerSettings:
    """Server settings from `XMODAL_*` variables (defaults where unset), checked.

    Raises:
        ServerSettingsError: unsafe or malformed values.
    """
    env = os.environ if environ is None else environ
    defaults = ServerSettings()
    try:
        settings = ServerSettings(
            host=env.get("XMODAL_HOST") or defaults.host,
            port=int(env.get("XMODAL_PORT") or defaults.port),
            api_key=env.get("XMODAL_API_KEY") or None,
            allowed_hosts=_split(env.get("XMODAL_ALLOWED_HOSTS")),
            cors_origins=_split(env.get("XMODAL_CORS_ORIGINS")),
            max_upload_bytes=int(env.get("XMODAL_MAX_UPLOAD_BYTES") or defaults.max_upload_bytes),
            max_active_searches=int(env.get("XMODAL_MAX_ACTIVE_SEARCHES") or defaults.max_active_searches),
            reload_seconds=float(env.get("XMODAL_RELOAD_SECONDS") or defaults.reload_seconds),
            batch_wait_ms=float(env.get("XMODAL_BATCH_WAIT_MS") or defaults.batch_wait_ms),
        )
    except ValueError as error:
        raise ServerSettingsError(f"bad server setting in the environment: {error}") from None
    return settings.checked()
