"""`GET /items/{id}`, its original file and its thumbnail. Files are found by item id only; no
path from a request ever reaches the filesystem."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response

from api.deps import State
from api.errors import ApiError
from api.files import display_path, media_type, servable_path, urls
from api.schemas import MAX_ITEM_ID, ItemResponse, error_responses
from api.state import ServerState
from api.thumbnails import THUMBNAIL_MEDIA_TYPE
from index.records import ItemRecord
from retrieval.media.errors import MediaError

router = APIRouter(prefix="/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=MAX_ITEM_ID, description="The item's id, from a search result.")]
_ERRORS = error_responses(401, 404, 422, 503)


def _item(state: ServerState, item_id: int) -> ItemRecord:
    item = state.engine.collection.store.get_item(item_id)
    if item is None:
        raise ApiError(404, f"no item with id {item_id}")
    return item


@router.get("/{item_id}", response_model=ItemResponse, responses=_ERRORS)
def get_item(item_id: ItemId, state: State) -> dict:
    """An item's metadata."""
    item = _item(state, item_id)
    path = display_path(item.path, state.roots)
    return {"id": item.id, "modality": item.modality, "format": item.format, "name": path.rsplit("/", 1)[-1],
            "path": path, "size": item.size, "width": item.width, "height": item.height, "duration": item.duration,
            "sample_rate": item.sample_rate, "channels": item.channels, "indexed_at": item.indexed_at,
            **urls(item.id)}


_FILE_RESPONSES = {200: {"content": {"image/*": {}, "audio/*": {}}, "description": "The original file."},
                   **_ERRORS}


@router.get("/{item_id}/media", response_class=FileResponse, responses=_FILE_RESPONSES)
def get_media(item_id: ItemId, state: State) -> FileResponse:
    """The original file, with its real content type (byte ranges supported, for seeking in sounds)."""
    item = _item(state, item_id)
    real = servable_path(item, state.roots)
    name = display_path(item.path, state.roots).rsplit("/", 1)[-1]
    return FileResponse(real, media_type=media_type(item), filename=name, content_disposition_type="inline",
                        headers={"Cache-Control": "private, max-age=300"})


@router.get("/{item_id}/thumbnail", response_class=Response,
            responses={200: {"content": {THUMBNAIL_MEDIA_TYPE: {}}, "description": "A small picture."}, **_ERRORS})
def get_thumbnail(item_id: ItemId, state: State) -> Response:
    """A small picture: the image itself, or the waveform of a sound. Cached by content."""
    item = _item(state, item_id)
    real = servable_path(item, state.roots)
    try:
        data = state.thumbnails.get(item.id, item.content_hash, real, item.modality, state.settings.limits)
    except MediaError as error:
        raise ApiError(404, f"no thumbnail for item {item_id}: {error.error_class.value.lower()} file") from None
    return Response(data, media_type=THUMBNAIL_MEDIA_TYPE,
                    headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{item.content_hash[:32]}"'})
