"""Request and response schemas: what `/openapi.json` promises and what responses are checked against."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from retrieval.engine import MAX_K, MAX_QUERY_CHARS

Target = Literal["image", "audio", "all"]
Generate = Literal["auto", "never", "always"]
MAX_ITEM_ID = 2**63 - 1  # SQLite's INTEGER range; larger ids cannot exist


FileType = Literal["jpeg", "png", "gif", "webp", "bmp", "wav", "flac", "ogg", "mp3"]
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+([+-]\d{2}:?\d{2}|Z)?)?$"


class Filters(BaseModel):
    """Which files a search may return; applied inside the search, so k results come back whenever k
    files pass."""

    under: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        [], max_length=32, description="Only files in these folders, as results show paths (media/photos).")
    types: list[FileType] = Field([], max_length=9, description="Only these file types.")
    since: str | None = Field(None, pattern=DATE_PATTERN, description="Modified on or after (YYYY-MM-DD or ISO).")
    until: str | None = Field(None, pattern=DATE_PATTERN, description="Modified up to this date, inclusive.")


class TextQuery(Filters):
    # Strict: JSON gives real types, so `false` is not a confidence and "10" is not a k.
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="Words describing what to find.")
    k: int = Field(10, ge=1, le=MAX_K, description="How many results.")
    modality: Target = Field("all", description="Search images, sounds, or both.")
    min_confidence: float | None = Field(None, ge=0, le=1, description="Confidence needed for a match "
                                                                         "(default: the calibration's).")
    generate: Generate = Field("auto", description="Draw a picture when nothing matches (auto), never, or always.")


class ItemQuery(Filters):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: int = Field(ge=1, le=MAX_ITEM_ID, description="An indexed item: find more like it.")
    k: int = Field(10, ge=1, le=MAX_K)
    modality: Target = "all"
    min_confidence: float | None = Field(None, ge=0, le=1)
    generate: Generate = "auto"


class Segment(BaseModel):
    start: float
    end: float


class Hit(BaseModel):
    id: int
    modality: Literal["image", "audio"]
    score: float = Field(description="Cosine similarity to the query, -1..1.")
    segment: Segment | None = Field(description="For a sound: the best-matching time range, in seconds.")
    path: str = Field(description="Indexed folder name and the path below it.")
    name: str
    generated: bool = Field(description="A picture xmodal drew and the user kept in the collection, not their "
                                        "own media.")
    media_url: str
    thumbnail_url: str


class QueryEcho(BaseModel):
    kind: Literal["text", "image", "audio", "item"]
    value: str


class MatchDecision(BaseModel):
    match: bool = Field(description="Does the collection hold what was asked?")
    confidence: float = Field(ge=0, le=1, description="Calibrated probability of a match.")
    threshold: float
    reason: str


class GeneratedPicture(BaseModel):
    id: str
    generated: Literal[True] = Field(description="Always true: this picture is not from the collection.")
    url: str
    query_kind: str
    query_value: str
    seed: int
    model: str
    generator: str
    score: float = Field(description="Cosine of the picture's embedding to the query.")
    created: float


class SearchResponse(BaseModel):
    query: QueryEcho
    decision: MatchDecision | None = Field(description="None when the model has no calibration for this query.")
    generated: GeneratedPicture | None = Field(description="A picture drawn because nothing matched.")
    results: list[Hit]
    took_ms: float


class ItemResponse(BaseModel):
    id: int
    modality: Literal["image", "audio"]
    format: str
    name: str
    path: str
    size: int
    width: int | None
    height: int | None
    duration: float | None
    sample_rate: int | None
    channels: int | None
    indexed_at: float
    media_url: str
    thumbnail_url: str


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    generation: int
    index: str = Field(description="loaded | rebuilt | empty (ok); stale | degraded | rebuilding | unavailable | "
                                   "unsaved (degraded)")
    reason: str = Field("", description="why the status is degraded (empty when ok)")


class Limits(BaseModel):
    max_upload_bytes: int
    max_k: int
    max_query_chars: int
    max_audio_seconds: float
    max_image_pixels: int


class InfoResponse(BaseModel):
    model: str
    dim: int
    items: dict[str, int]
    vectors: dict[str, int]
    index_specs: dict[str, str]
    generation: int
    index_current: bool
    limits: Limits
    auth: bool


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {status: {"model": ErrorResponse} for status in statuses}
