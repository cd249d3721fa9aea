"""The composition root: the one place that wires encoders, collections and generators,
for both the CLI and the API."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from index.backends import open_collection
from index.collection import STORE_NAME, Collection, read_encoder_identity
from index.errors import StoreError
from index.lock import WriterLock
from index.manifest import EncoderIdentity, load_manifest
from index.records import ErrorRecord
from index.roots import record_roots
from index.store import Store
from retrieval.engine import SearchEngine
from retrieval.indexing.pipeline import IndexOptions, ProgressCallback, default_workers, index_paths
from retrieval.indexing.summary import IndexSummary
from retrieval.indexing.walk import resolve_roots
from retrieval.settings import Settings


def _model_spec(settings: Settings, stored: EncoderIdentity | None) -> str:
    """The requested model, else the one the database was built with, else the default."""
    from retrieval.encoders.factory import DEFAULT_MODEL

    return settings.model or (stored.spec if stored else DEFAULT_MODEL)


def _no_collection(settings: Settings) -> StoreError:
    db = settings.milvus.describe() if settings.milvus else settings.db_dir  # what the user gave as --db
    return StoreError(f"no collection at {db} (run `xmodal index FOLDER --db {db}` first)")


def build_engine(settings: Settings, defer_rebuild: bool = False) -> SearchEngine:
    """A search engine over an existing collection (read-only; a writer may work meanwhile).

    `defer_rebuild`: index files that must be rebuilt from the store are left for the caller's
    `engine.collection.finish_rebuild()` (a server answers /health meanwhile); searches until then
    raise IndexRebuildingError.

    Raises:
        StoreError: no collection at `settings.db_dir`.
        EncoderMismatchError, ModelNotFoundError, ModelLoadError.
    """
    from retrieval.encoders.factory import create_encoder

    stored = read_encoder_identity(settings.db_dir)
    if stored is None:
        raise _no_collection(settings)
    encoder = create_encoder(_model_spec(settings, stored), settings.device, settings.batch_size)
    collection = open_collection(settings.db_dir, encoder.identity, writable=False, milvus=settings.milvus,
                                 device=str(encoder.device), defer_rebuild=defer_rebuild)
    engine = SearchEngine(encoder, collection, settings.limits, _match_judge(encoder, collection))
    _attach_generator(engine, settings.generator)
    return engine


def _model_dir(encoder) -> Path | None:
    from retrieval.encoders.factory import resolve_model_dir
    from retrieval.errors import ModelNotFoundError

    try:
        return resolve_model_dir(encoder.identity.spec)
    except ModelNotFoundError:
        return None  # an open_clip ARCH:PRETRAINED pair: no directory to hold a calibration or generator


def _attach_generator(engine: SearchEngine, choice: str | None) -> None:
    """The generator that draws when nothing matches.

    `choice` None: the model's own (MODEL_DIR/generator), when it was trained for exactly this
    model; a missing or damaged one leaves search working, without the fallback. "none": no
    fallback. A generator directory or a `diffusers:` spec: that one, and it must load.

    Raises:
        ModelLoadError: an explicitly chosen generator cannot be loaded or was made for another model.
    """
    from generation.errors import GeneratorLoadError
    from retrieval.errors import ModelLoadError

    if choice is not None and choice.strip().lower() == "none":
        return
    if choice is None:
        model_dir = _model_dir(engine.encoder)
        folder = model_dir / "generator" if model_dir else None
        if folder is None or not (folder / "generator.json").is_file():
            return
        try:
            engine.generator = _flow_drawer(engine, folder, f"{engine.encoder.identity.spec}/generator")
        except GeneratorLoadError:
            return
        return
    try:
        engine.generator = _chosen_drawer(engine, choice)
    except GeneratorLoadError as error:
        raise ModelLoadError(f"cannot use the generator {choice}: {error}") from None


def _flow_drawer(engine: SearchEngine, folder: Path, name: str):
    """Raises GeneratorLoadError: damaged, or trained for another model's space."""
    from generation.drawer import FlowDrawer
    from generation.errors import GeneratorLoadError
    from generation.storage import WEIGHTS_NAME, load_generator
    from index.atomic import sha256_file

    generator = load_generator(folder, engine.encoder.device)
    if generator.config.trained_on.get("fingerprint") != engine.encoder.identity.fingerprint:
        raise GeneratorLoadError(f"{folder} was trained for {generator.config.trained_on.get('model', 'another model')}"
                                 f", not for this collection's model {engine.encoder.identity.spec}")
    return FlowDrawer(generator, name, sha256_file(folder / WEIGHTS_NAME)[:32])


def _chosen_drawer(engine: SearchEngine, choice: str):
    from generation.diffusers_adapter import is_diffusers_spec, load_diffusers_drawer, parse_spec
    from generation.errors import GeneratorLoadError
    from retrieval.encoders.pretrained import hub_reachable

    if not is_diffusers_spec(choice):
        folder = Path(choice).expanduser()
        return _flow_drawer(engine, folder, str(folder))
    spec = parse_spec(choice)
    # Offline, the hub client retries for half a minute: probe first and load from the cache only.
    local_only = not spec.is_local and not hub_reachable()
    drawer = load_diffusers_drawer(choice, str(engine.encoder.device), local_only)
    if drawer.dim is not None and drawer.dim != engine.encoder.dim:
        raise GeneratorLoadError(f"the pipeline takes {drawer.dim}-dimensional image embeddings, but "
                                 f"{engine.encoder.identity.spec} makes {engine.encoder.dim}-dimensional vectors: "
                                 f"index with the CLIP model the pipeline was built on")
    return drawer


def _match_judge(encoder, collection: Collection):
    """The calibrated match decision, when the model directory ships a calibration for this model."""
    from retrieval.matching import MatchJudge, load_calibration

    calibration = load_calibration(_model_dir(encoder), encoder.identity.fingerprint)
    return MatchJudge(calibration, collection, encoder.dim) if calibration else None


def run_index(settings: Settings, paths: list[Path], progress: ProgressCallback | None = None) -> IndexSummary:
    """Index `paths` into the collection, holding its writer lock for the whole run.

    Raises:
        DatabaseLockedError: another process is writing (checked before the model loads).
        QueryError: a path does not exist. Model and storage errors as in build_engine.
    """
    from retrieval.encoders.factory import create_encoder

    roots = resolve_roots(paths)
    settings.db_dir.mkdir(parents=True, exist_ok=True)
    with WriterLock(settings.db_dir):
        encoder = create_encoder(_model_spec(settings, read_encoder_identity(settings.db_dir)), settings.device,
                                 settings.batch_size)
        collection = open_collection(settings.db_dir, encoder.identity, writable=True, milvus=settings.milvus,
                                     index_spec=settings.index_spec, device=str(encoder.device))
        options = IndexOptions(workers=settings.workers or default_workers(), batch_size=settings.batch_size,
                               limits=settings.limits, exclude=[str(settings.db_dir)],
                               ray_address=settings.ray_address)
        try:
            record_roots(collection.store, roots)
            summary = index_paths(roots, collection, encoder, options, progress)
            summary.index_status = collection.status.state
            _save_if_stale(collection)
        except KeyboardInterrupt:
            _save_if_stale(collection)  # what was committed becomes searchable at once
            raise
        finally:
            collection.close()
    return summary


def keep_generated(settings: Settings, encoder, picture: Path) -> IndexSummary:
    """Add a generated picture (under DB/generated) to the searchable collection, through the same
    indexing as any file, so it is durable and its results say "generated".

    Raises:
        DatabaseLockedError: another process is writing.
        QueryError: `picture` is not one of this collection's generated pictures.
    """
    from retrieval.errors import QueryError
    from retrieval.fallback import generated_prefix

    folder = generated_prefix(settings.db_dir)
    path = os.path.abspath(picture)
    if not path.startswith(folder) or not os.path.isfile(path):
        raise QueryError(f"{picture} is not a generated picture of the collection at {settings.db_dir}")
    with WriterLock(settings.db_dir):
        collection = open_collection(settings.db_dir, encoder.identity, writable=True, milvus=settings.milvus)
        options = IndexOptions(workers=1, batch_size=settings.batch_size, limits=settings.limits)
        try:
            record_roots(collection.store, [folder.rstrip(os.sep)])  # the API may serve kept pictures
            summary = index_paths([path], collection, encoder, options)
            _save_if_stale(collection)
        finally:
            collection.close()
    return summary


def _save_if_stale(collection: Collection) -> None:
    manifest = load_manifest(collection.db_dir)
    if manifest is None or manifest.store_version != collection.built_from_version or collection.needs_respec():
        collection.save_generation()


@dataclass(frozen=True)
class CollectionInfo:
    db_dir: str
    model: str
    fingerprint: str
    dim: int
    items: dict[str, int]
    vectors: dict[str, int]
    index_specs: dict[str, str]
    # per modality, for approximate indexes: {"parameter": "nprobe=8", "recall_at_10": 0.97} as tuned
    index_tuning: dict[str, dict]
    generation: int
    store_version: int
    index_current: bool
    disk_bytes: int
    errors: int

    def to_dict(self) -> dict:
        return dict(vars(self))


def _open_store(db_dir: Path) -> Store:
    return Store.open(Path(db_dir) / STORE_NAME, readonly=True)


def collection_info(settings: Settings) -> CollectionInfo:
    """Model, counts, index specs, size on disk and error count, without loading the model."""
    identity = read_encoder_identity(settings.db_dir)
    if identity is None:
        raise _no_collection(settings)
    store = _open_store(settings.db_dir)
    try:
        counts = store.counts()
        version = store.store_version
        errors = store.error_count()
    finally:
        store.close()
    manifest = load_manifest(settings.db_dir)
    size = sum(p.stat().st_size for p in Path(settings.db_dir).rglob("*") if p.is_file())
    return CollectionInfo(
        db_dir=str(Path(settings.db_dir).absolute()),
        model=identity.spec,
        fingerprint=identity.fingerprint,
        dim=identity.dim,
        items={m: c["items"] for m, c in counts.items()},
        vectors={m: c["vectors"] for m, c in counts.items()},
        index_specs={m: e.spec for m, e in manifest.indexes.items()} if manifest else {},
        index_tuning={m: {"parameter": e.search_parameter, "recall_at_10": e.recall}
                      for m, e in manifest.indexes.items() if e.search_parameter} if manifest else {},
        generation=manifest.generation if manifest else 0,
        store_version=version,
        index_current=bool(manifest and manifest.store_version == version),
        disk_bytes=size,
        errors=errors,
    )


def list_errors(settings: Settings, error_class: str | None = None) -> list[ErrorRecord]:
    """The error ledger of a collection."""
    if not (Path(settings.db_dir) / STORE_NAME).exists():
        raise _no_collection(settings)
    store = _open_store(settings.db_dir)
    try:
        return store.list_errors(error_class)
    finally:
        store.close()
