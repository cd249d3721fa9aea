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
# Why /health says degraded, per collection state. Fixed words, since /health needs no key: the
# collection's own reason can name server paths (it goes to the server log instead).
DEGRADED_REASONS = {
    "stale": "a writer is indexing; searching the last saved generation",
    "degraded": "a damaged index generation is being rebuilt from the store; searching the previous one meanwhile",
    "rebuilding": "rebuilding the index from the store after damage; searches answer 503 until it is in place",
    "unavailable": "rebuilding the index from the store failed (see the server log); searches answer 503",
    "unsaved": "the index was rebuilt from the store in memory but could not be saved (see the server log)",
}


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/health", response_model=HealthResponse, responses=error_responses(503))
def health(state: State) -> dict:
    """Liveness and the loaded index generation; needs no key."""
    collection = state.engine.collection
    now = collection.status
    reason = "" if now.healthy else DEGRADED_REASONS.get(now.state, "see the server log")
    return {"status": "ok" if now.healthy else "degraded", "generation": collection.generation,
            "index": now.state, "reason": reason}


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
