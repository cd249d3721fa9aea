"""The FastAPI application behind `xmodal serve`.

`xmodal serve` runs `uvicorn api.app:create_app --factory`, handing its options over in `XMODAL_*`
environment variables (the CLI and the API never import each other). Tests call
`create_app(settings, server)` directly.

Heavy work happens once, in the lifespan: the model and the collection load before the first
request is accepted. Search endpoints are plain `def` functions, so FastAPI runs them in its
thread pool; the encoder itself is driven by one thread that batches concurrent text queries
(retrieval/query_batcher.py).
"""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.errors import install_error_handlers
from api.middleware import BodyLimit, HostGuard, KeyGuard, SearchQueue, SecurityHeaders, hash_key
from api.routes import generated, items, search, service
from api.routes.docs import install_docs
from api.schemas import error_responses
from retrieval.settings import ServerSettings, Settings, load_server_settings, load_settings

SEARCH_QUEUE_FACTOR = 4  # searches that may wait for a turn, per search running (api/middleware.SearchQueue)


def create_app(settings: Settings | None = None, server: ServerSettings | None = None) -> FastAPI:
    """The service over the collection in `settings.db_dir`.

    Raises:
        ServerSettingsError: unsafe server settings (an open address without an API key).
    """
    settings = settings or load_settings()
    from_environment = server is None
    server = (server or load_server_settings()).checked()
    # Only the key's digest outlives this function: the plain key leaves the settings the service
    # keeps and the environment `xmodal serve` handed it over in, so no dump of either shows it.
    key_hash = hash_key(server.api_key) if server.api_key else None
    server = replace(server, api_key=None)
    if from_environment:
        os.environ.pop("XMODAL_API_KEY", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from api.state import ServerState

        try:
            app.state.xmodal = await run_in_threadpool(ServerState.start, settings, server)
        except Exception as error:
            _exit_on_startup_error(error)
            raise
        try:
            yield
        finally:
            state, app.state.xmodal = app.state.xmodal, None
            await run_in_threadpool(state.close)

    app = FastAPI(
        title="xmodal",
        summary="Cross-modal search over your images and sounds: ask with words, a picture or a sound.",
        version=_version(),
        lifespan=lifespan,
        # Any route can meet a bad Host header or body (400), a missing key (401), an oversized
        # body (413), invalid fields (422) or a collection that went away (503).
        responses=error_responses(400, 401, 413, 422, 503),
        docs_url=None,  # replaced by install_docs: the same pages without a CDN
        redoc_url=None,
    )
    app.state.xmodal = None
    app.state.key_hash = key_hash
    install_error_handlers(app)
    app.include_router(search.router)
    app.include_router(items.router)
    app.include_router(generated.router)
    app.include_router(service.router)
    app.mount("/static", StaticFiles(directory=service.STATIC_DIR), name="static")
    install_docs(app)
    # Starlette runs the last added outermost: hosts first, then the key, the body limit, the line.
    app.add_middleware(SearchQueue, limit=SEARCH_QUEUE_FACTOR * server.max_active_searches)
    app.add_middleware(BodyLimit, upload_limit=server.max_upload_bytes)
    app.add_middleware(KeyGuard, key_hash=key_hash)
    if server.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(server.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(HostGuard, names=server.host_names())
    app.add_middleware(SecurityHeaders)
    return app


def _exit_on_startup_error(error: Exception) -> None:
    """A known reason not to start (no collection, another model, damaged database) ends the
    process with one line and the CLI's exit code, instead of the lifespan's traceback. This is
    an edge, like cli/: nothing else here exits."""
    from index.errors import DatabaseCorruptError, EncoderMismatchError, StoreError
    from retrieval.errors import ModelLoadError, ModelNotFoundError

    for types, code in (((ModelNotFoundError, ModelLoadError), 4), ((DatabaseCorruptError,), 5),
                        ((StoreError, EncoderMismatchError), 1)):
        if isinstance(error, types):
            print(f"xmodal: error: cannot serve: {error}", file=sys.stderr, flush=True)
            os._exit(code)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmodal")
    except PackageNotFoundError:
        return "0+unknown"
