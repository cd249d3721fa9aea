"""`GET /generated/{id}`: a picture the engine drew because nothing matched, by its id only (24 hex
digits), labelled as generated in a response header as well as in every search answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from api.deps import State
from api.errors import ApiError
from api.schemas import error_responses
from retrieval.fallback import GeneratedStore

router = APIRouter(prefix="/generated", tags=["generated"])

GeneratedId = Annotated[str, Path(pattern="^[0-9a-f]{24}$", description="From a search answer's `generated.id`.")]


@router.get("/{image_id}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "The generated picture."},
                       **error_responses(401, 404, 422)})
def get_generated(image_id: GeneratedId, state: State) -> FileResponse:
    """A generated picture (PNG). Never part of the searchable collection."""
    found = GeneratedStore(state.settings.db_dir).find(image_id)
    if found is None:
        raise ApiError(404, f"no generated picture with id {image_id}")
    picture, provenance = found
    return FileResponse(picture, media_type="image/png", headers={
        "Cache-Control": "private, max-age=86400", "X-Xmodal-Generated": "true",
        "Content-Disposition": f'inline; filename="generated-{provenance.id}.png"'})
