"""What the service holds while it runs: the engine (built once, in the lifespan), the thumbnail
cache, the admission limits (searches; drawings in api/generation.py), and a watcher that picks up
new index generations.

Index files that must be rebuilt from the store (damaged, truncated, lost, stale) do not hold up the
start: the lifespan returns with the collection 'rebuilding' and the watcher's first task is that
rebuild, so the server listens at once, /health says degraded and searches get 503 + Retry-After
until the rebuilt generation is in place (a large collection takes minutes)."""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from api.errors import ApiError
from api.generation import GatedDrawer, GenerationGate
from api.thumbnails import ThumbnailCache
from index.roots import indexed_roots
from retrieval.engine import SearchEngine
from retrieval.settings import ServerSettings, Settings

log = logging.getLogger("xmodal.api")


class Admission:
    """At most `limit` searches at once; the next one is told to come back (429) instead of queueing
    without bound behind them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    @contextmanager
    def slot(self):
        with self._lock:
            if self.active >= self.limit:
                raise ApiError(429, f"too many searches at once ({self.limit}); retry in a second",
                               {"Retry-After": "1"})
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


@dataclass
class ServerState:
    settings: Settings
    server: ServerSettings
    engine: SearchEngine
    thumbnails: ThumbnailCache
    admission: Admission
    roots: list[tuple[str, str]] | None  # (as indexed, real path) of each root; None: a store from before roots
    _stop: threading.Event
    _watcher: threading.Thread | None = None
    _reported: object = None  # the collection status last logged by the watcher
    generation: GenerationGate | None = None  # None: this model draws nothing

    @classmethod
    def start(cls, settings: Settings, server: ServerSettings) -> ServerState:
        """Load the model and the collection and start the generation watcher (blocking: call it
        from a thread)."""
        from retrieval.compose import build_engine

        engine = build_engine(settings, defer_rebuild=True)
        gate = None
        if engine.generator is not None:
            gate = GenerationGate()
            engine.generator = GatedDrawer(engine.generator, gate)
        try:
            engine.start_batching(max_wait_ms=server.batch_wait_ms)
            engine.warm_up()
            state = cls(settings, server, engine, ThumbnailCache(_thumbnail_folder(settings.db_dir)),
                        Admission(server.max_active_searches), None, threading.Event(), generation=gate)
            state.refresh_roots()
        except BaseException:
            engine.close()
            raise
        state._watcher = threading.Thread(target=state._watch, name="xmodal-generation-watcher", daemon=True)
        state._watcher.start()
        return state

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.engine.close()

    def refresh_roots(self) -> None:
        roots = indexed_roots(self.engine.collection.store)
        self.roots = None if roots is None else [(root, os.path.realpath(root)) for root in roots]

    def _watch(self) -> None:
        """Finish a rebuild the start left pending, then load each new generation an indexer saves;
        searches in flight finish on the old one."""
        self._finish_rebuild()
        while not self._stop.wait(self.server.reload_seconds):
            collection = self.engine.collection
            try:
                if collection.refresh():
                    self.refresh_roots()
                    log.info("loaded index generation %d (%s)", collection.generation, collection.status.state)
            except Exception:  # noqa: BLE001 - a failed reload keeps serving the loaded generation
                log.exception("could not load the new index generation; still serving the previous one")
            if not collection.status.healthy and collection.status != self._reported:
                # /health says "degraded" meanwhile; the log says why, once per cause.
                log.warning("index degraded: %s", collection.status.reason)
            self._reported = collection.status

    def _finish_rebuild(self) -> None:
        collection = self.engine.collection
        if collection.status.state != "rebuilding":
            return
        log.warning("index degraded: %s", collection.status.reason)
        self._reported = collection.status
        try:
            collection.finish_rebuild()
        except Exception:  # noqa: BLE001 - the server stays up, degraded; a writer's next generation recovers it
            log.exception("could not rebuild the index from the store; searches answer 503 until a writer saves one")
            return
        log.info("rebuilt the index from the store (%s)", collection.status.state)


def _thumbnail_folder(db_dir: Path) -> Path | None:
    """Thumbnails are cached beside the collection when its folder is writable, else only in memory."""
    folder = Path(db_dir) / "thumbnails"
    return folder if os.access(db_dir, os.W_OK) else None
