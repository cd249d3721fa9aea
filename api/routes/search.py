"""`POST /search/{text,image,audio,item}`: one query in, ranked items out (the CLI's JSON shape,
plus URLs to fetch each result)."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import ValidationError

from api.deps import State
from api.errors import ApiError
from api.files import display_path, server_folders, urls
from api.schemas import (
    DATE_PATTERN,
    FileType,
    Filters,
    Generate,
    ItemQuery,
    SearchResponse,
    Target,
    TextQuery,
    error_responses,
)
from api.state import ServerState
from retrieval.engine import MAX_K, SearchResult

router = APIRouter(prefix="/search", tags=["search"])

# OpenAPI links: what a client (and schemathesis' stateful run) can do next with an answer.
_FIRST_ID = "$response.body#/results/0/id"
_LINKS = {200: {"description": "Ranked items, the match decision and any generated picture.", "links": {
    "GetFirstItem": {"operationRef": "#/paths/~1items~1{item_id}/get", "parameters": {"item_id": _FIRST_ID}},
    "GetFirstMedia": {"operationRef": "#/paths/~1items~1{item_id}~1media/get", "parameters": {"item_id": _FIRST_ID}},
    "GetFirstThumbnail": {"operationRef": "#/paths/~1items~1{item_id}~1thumbnail/get",
                          "parameters": {"item_id": _FIRST_ID}},
    "MoreLikeTheFirst": {"operationRef": "#/paths/~1search~1item/post", "requestBody": {"id": _FIRST_ID}},
    "GetGenerated": {"operationRef": "#/paths/~1generated~1{image_id}/get",
                     "parameters": {"image_id": "$response.body#/generated/id"}},
}}}
_SEARCH_ERRORS = {**error_responses(400, 401, 422, 429, 503), **_LINKS}
_UPLOAD_ERRORS = {**error_responses(400, 401, 413, 415, 422, 429, 503), **_LINKS}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")

KField = Annotated[int, Form(ge=1, le=MAX_K, description="How many results.")]
TargetField = Annotated[Target, Form(description="Search images, sounds, or both.")]
ConfidenceField = Annotated[float | None, Form(ge=0, le=1, description="Confidence needed for a match.")]
GenerateField = Annotated[Generate, Form(description="Draw a picture when nothing matches (auto), never, or always.")]
UploadField = Annotated[UploadFile, File(description="The query file.")]
UnderField = Annotated[list[str] | None, Form(description="Only files in these folders, as results show paths.")]
TypesField = Annotated[list[FileType] | None, Form(description="Only these file types.")]
SinceField = Annotated[str | None, Form(pattern=DATE_PATTERN, description="Modified on or after (YYYY-MM-DD).")]
UntilField = Annotated[str | None, Form(pattern=DATE_PATTERN, description="Modified up to this date, inclusive.")]


def _form_filters(under: list[str] | None, types: list[str] | None, since: str | None, until: str | None) -> Filters:
    """The filter fields of a form, checked as the JSON body's are (a form field has no item limits)."""
    try:
        return Filters(under=under or [], types=types or [], since=since, until=until)
    except ValidationError as error:
        first = error.errors()[0]
        raise ApiError(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _where(state: ServerState, filters: Filters):
    from retrieval.filters import build_filter

    return build_filter(server_folders(filters.under, state.roots), list(filters.types), filters.since, filters.until)


def _response(state: ServerState, result: SearchResult, started: float) -> dict:
    hits = []
    for hit in result.results:
        segment = {"start": hit.segment[0], "end": hit.segment[1]} if hit.segment else None
        path = display_path(hit.path, state.roots)
        hits.append({"id": hit.id, "modality": hit.modality, "score": round(hit.score, 6), "segment": segment,
                     "path": path, "name": path.rsplit("/", 1)[-1], "generated": hit.generated, **urls(hit.id)})
    return {"query": {"kind": result.query_kind, "value": result.query_value},
            "decision": result.decision.to_dict() if result.decision else None,
            "generated": {**result.generated.to_dict(), "url": f"/generated/{result.generated.id}"}
            if result.generated else None,
            "results": hits,
            "took_ms": round((time.perf_counter() - started) * 1000, 3)}


def _upload_name(upload: UploadFile, fallback: str) -> str:
    """The client's file name, reduced to something safe to echo: no folders, no control characters."""
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNPRINTABLE.sub("", name).strip()[:200]
    return name or fallback


def _search_upload(state: ServerState, upload: UploadFile, expected: str, k: int, modality: str,
                   min_confidence: float | None, generate: str, filters: Filters) -> dict:
    started = time.perf_counter()
    where = _where(state, filters)
    with state.admission.slot():
        # BodyLimit has already bounded the request; this bounds what one part can hand us.
        data = upload.file.read(state.server.max_upload_bytes + 1)
        name = _upload_name(upload, f"uploaded {expected}")
        result = state.engine.search_bytes(data, name, expected, k, modality, media_type=upload.content_type,
                                           min_confidence=min_confidence, generate=generate, where=where)
        return _response(state, result, started)


@router.post("/text", response_model=SearchResponse, responses=_SEARCH_ERRORS)
def search_text(query: TextQuery, state: State) -> dict:
    """Find images and sounds that match words."""
    started = time.perf_counter()
    where = _where(state, query)
    with state.admission.slot():
        result = state.engine.search_text(query.query, query.k, query.modality, query.min_confidence,
                                          query.generate, where)
        return _response(state, result, started)


@router.post("/image", response_model=SearchResponse, responses=_UPLOAD_ERRORS)
def search_image(file: UploadField, state: State, k: KField = 10, modality: TargetField = "all",
                 min_confidence: ConfidenceField = None, generate: GenerateField = "auto", under: UnderField = None,
                 types: TypesField = None, since: SinceField = None, until: UntilField = None) -> dict:
    """Find images and sounds that match an uploaded picture (JPEG, PNG, GIF, WebP, BMP)."""
    filters = _form_filters(under, types, since, until)
    return _search_upload(state, file, "image", k, modality, min_confidence, generate, filters)


@router.post("/audio", response_model=SearchResponse, responses=_UPLOAD_ERRORS)
def search_audio(file: UploadField, state: State, k: KField = 10, modality: TargetField = "all",
                 min_confidence: ConfidenceField = None, generate: GenerateField = "auto", under: UnderField = None,
                 types: TypesField = None, since: SinceField = None, until: UntilField = None) -> dict:
    """Find images and sounds that match an uploaded sound (WAV, FLAC, Ogg Vorbis, MP3)."""
    filters = _form_filters(under, types, since, until)
    return _search_upload(state, file, "audio", k, modality, min_confidence, generate, filters)


@router.post("/item", response_model=SearchResponse, responses={**error_responses(401, 404, 422, 429, 503), **_LINKS})
def search_item(query: ItemQuery, state: State) -> dict:
    """More like this: search with an indexed item's own vector."""
    started = time.perf_counter()
    where = _where(state, query)
    with state.admission.slot():
        result = state.engine.search_item(query.id, query.k, query.modality, query.min_confidence,
                                          query.generate, where)
        return _response(state, result, started)
