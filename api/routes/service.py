"""The page at `/`, `GET /health` and `GET /info`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from api.deps import State
from api.schemas import HealthResponse, InfoResponse, error_responses
from retrieval.engine import MAX_K, MAX_QUERY_CHARS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/health", response_model=HealthResponse, responses=error_responses(503))
def health(state: State) -> dict:
    """Liveness and the loaded index generation; needs no key."""
    collection = state.engine.collection
    status = "ok" if collection.status.state in ("loaded", "rebuilt", "empty") else "degraded"
    return {"status": status, "generation": collection.generation, "index": collection.status.state}


@router.get("/info", response_model=InfoResponse, responses=error_responses(401, 503))
def info(state: State, request: Request) -> dict:
    """The model, counts per modality, index specs and the service's limits."""
    from retrieval.compose import collection_info

    details = collection_info(state.settings)
    limits = state.settings.limits
    return {"model": details.model, "dim": details.dim, "items": details.items, "vectors": details.vectors,
            "index_specs": details.index_specs, "generation": state.engine.collection.generation,
            "index_current": details.index_current, "auth": request.app.state.key_hash is not None,
            "limits": {"max_upload_bytes": state.server.max_upload_bytes, "max_k": MAX_K,
                       "max_query_chars": MAX_QUERY_CHARS, "max_audio_seconds": limits.max_audio_seconds,
                       "max_image_pixels": limits.max_image_pixels}}
