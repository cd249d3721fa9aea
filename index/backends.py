"""Where a collection lives, from the `--db` value, and the one function that opens it.

    --db DIR                          FAISS: DIR holds the store, the index files and the manifest
    --db PATH.db                      embedded Milvus (milvus-lite) in PATH.db; ledger PATH.xmodal/
    --db milvus://HOST[:PORT]/NAME    a Milvus server; ledger $XMODAL_HOME/milvus/HOST-PORT-NAME/

With Milvus the SQLite store stays as the local *ledger*: the source of truth (vectors included),
the error ledger, the writer lock, generated pictures and thumbnails. Milvus replaces only the FAISS
index files, so it can always be rebuilt from the ledger without re-encoding media. The ledger
records which Milvus collection it feeds, so `--db LEDGER_DIR` (what `xmodal serve` hands to its
app) reaches the same collection. `XMODAL_HOME` defaults to `$XDG_DATA_HOME/xmodal`, usually
~/.local/share/xmodal. A `PATH.db` that is an existing FAISS collection directory stays one.

Nothing here imports pymilvus (a FAISS collection never pays for it), and settings parsing imports
only the standard library from here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from index.errors import MilvusError, StoreError

if TYPE_CHECKING:
    from index.collection import Collection
    from index.manifest import EncoderIdentity

STORE_NAME = "xmodal.sqlite3"  # as index.collection.STORE_NAME, which this module must not import at load
MILVUS_SCHEME = "milvus://"
DEFAULT_MILVUS_PORT = 19530
LITE_COLLECTION = "xmodal"  # a milvus-lite file holds one xmodal collection, under this base name
LEDGER_SUFFIX = ".xmodal"
TARGET_KEY = "milvus_target"  # store meta: the Milvus collection this ledger feeds
# Typer turns `--db` into a Path, which folds "milvus://" into "milvus:/": accept both.
_MILVUS_URL = re.compile(r"milvus:/+(?P<host>\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+)(?::(?P<port>\d+))?/(?P<name>[^/]*)/?")
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


@dataclass(frozen=True)
class MilvusTarget:
    """A Milvus collection and its local ledger.

    Attributes:
        uri: what `MilvusClient` connects to: "http://HOST:PORT", or the absolute path of a
            milvus-lite `.db` (a directory milvus-lite manages).
        name: base name of the Milvus collections: NAME_image, NAME_audio and NAME_xmodal (sync state).
        ledger_dir: the directory of the SQLite ledger, writer lock, generated pictures.
    """

    uri: str
    name: str
    ledger_dir: Path

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    def describe(self) -> str:
        """The `--db` value that names this target."""
        if self.lite:
            return self.uri
        return f"{MILVUS_SCHEME}{self.uri.split('://', 1)[1]}/{self.name}"

    def record(self) -> str:
        """What the ledger stores: a lite file relative to the ledger, so both can move together."""
        if self.lite:
            return json.dumps({"lite": os.path.relpath(self.uri, self.ledger_dir.parent)})
        return json.dumps({"uri": self.uri, "name": self.name})


def xmodal_home() -> Path:
    """`$XMODAL_HOME`, else `$XDG_DATA_HOME/xmodal` (usually ~/.local/share/xmodal)."""
    if os.environ.get("XMODAL_HOME"):
        return Path(os.environ["XMODAL_HOME"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "xmodal"


def is_milvus_location(value: str | Path) -> bool:
    """True when a `--db` value names a Milvus server or a milvus-lite file, not a FAISS directory."""
    text = str(value)
    if text.startswith("milvus:/"):
        return True
    path = Path(text).expanduser()
    return path.suffix == ".db" and not (path / STORE_NAME).exists()


def locate_db(value: str | Path) -> tuple[Path, MilvusTarget | None]:
    """The ledger (or FAISS collection) directory of a `--db` value, and its Milvus target if any.

    Raises:
        MilvusError: a `milvus://` value that is not HOST[:PORT]/COLLECTION.
    """
    text = str(value)
    if text.startswith("milvus:/"):
        match = _MILVUS_URL.fullmatch(text)
        if match is None or not _COLLECTION_NAME.fullmatch(match["name"]):
            raise MilvusError(f"--db {text}: expected milvus://HOST[:PORT]/COLLECTION, the collection name made of "
                              f"letters, digits and underscores, not starting with a digit")
        host, port, name = match["host"], int(match["port"] or DEFAULT_MILVUS_PORT), match["name"]
        folder = f"{host.strip('[]').replace(':', '_')}-{port}-{name}"
        ledger = xmodal_home() / "milvus" / folder
        return ledger, MilvusTarget(f"http://{host}:{port}", name, ledger)
    path = Path(text).expanduser()
    if is_milvus_location(path):
        path = path.absolute()
        ledger = path.with_suffix(LEDGER_SUFFIX)
        return ledger, MilvusTarget(str(path), LITE_COLLECTION, ledger)
    return path, None


def recorded_target(ledger_dir: Path) -> MilvusTarget | None:
    """The Milvus target a ledger directory feeds, or None for a FAISS collection (or none at all)."""
    from index.store import Store

    ledger_dir = Path(ledger_dir).absolute()
    if not (ledger_dir / STORE_NAME).exists():
        return None
    store = Store.open(ledger_dir / STORE_NAME, readonly=True)
    try:
        value = store.get_meta(TARGET_KEY)
    finally:
        store.close()
    if not value:
        return None
    try:
        data = json.loads(value)
        if "lite" in data:
            return MilvusTarget(str((ledger_dir.parent / data["lite"]).resolve()), LITE_COLLECTION, ledger_dir)
        return MilvusTarget(str(data["uri"]), str(data["name"]), ledger_dir)
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{ledger_dir} names its Milvus collection in an unreadable way: {value!r}") from None


def open_collection(
    db: str | Path,
    encoder: EncoderIdentity | None,
    *,
    writable: bool,
    milvus: MilvusTarget | None = None,
    index_spec: str | None = None,
    device: str | None = None,
    defer_rebuild: bool = False,
) -> Collection:
    """Open the collection a `--db` value (or a ledger directory) names: FAISS or Milvus.

    Args:
        db: a FAISS collection directory, a ledger directory, a `.db` path or a `milvus://` URL.
        milvus: the target, when the caller already parsed `db` (Settings does).
        index_spec, device: FAISS choices; a Milvus collection uses its own HNSW index.
        defer_rebuild: FAISS readers, as `Collection.open` (Milvus keeps its index on the server).

    Raises:
        MilvusError: pymilvus missing, server unreachable, a collection that is not xmodal's.
        EncoderMismatchError, StoreError, DatabaseCorruptError: as `Collection.open`.
    """
    from index.collection import Collection

    if milvus is None:
        ledger, milvus = locate_db(db)
        milvus = milvus or recorded_target(ledger)
        if milvus is None:
            return Collection.open(ledger, encoder, writable=writable, index_spec=index_spec, device=device,
                                   defer_rebuild=defer_rebuild)
    from index.milvus_backend import MilvusCollection  # deferred: pymilvus costs ~0.5 s to import

    return MilvusCollection.open_target(milvus, encoder, writable=writable)
