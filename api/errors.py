"""Every failure leaves the service as `{"error": {"code", "message"}}` with the right status.

Library errors are translated here, once. Messages that could carry a server path (storage errors,
unexpected exceptions) are replaced by a generic sentence; the details go to the server's log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("xmodal.api")

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "too_large", 415: "unsupported_media", 422: "invalid", 429: "busy", 500: "internal", 503: "unavailable",
}

# QueryFileError.reason -> HTTP status
_FILE_STATUS = {
    "TOO_LARGE": 413, "TOO_LONG": 413,
    "UNSUPPORTED": 415, "WRONG_MODALITY": 415, "NOT_MEDIA": 415,
    "CORRUPT": 422, "TRUNCATED": 422,
}


class ApiError(Exception):
    """An error the service answers with directly."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    """The first problem, by field, without echoing the (possibly huge) input back."""
    problems = error.errors()
    if not problems:
        return "the request is invalid"
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form"))
    message = str(first.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def translate(error: Exception) -> tuple[int, str]:
    """(status, client-safe message) for a library error; (500, generic) for anything unknown."""
    from index.errors import DatabaseCorruptError, IndexRebuildingError, StoreError
    from retrieval.errors import ItemNotFoundError, QueryError, QueryFileError
    from retrieval.query_batcher import BatcherClosedError

    if isinstance(error, ApiError):
        return error.status, error.message
    if isinstance(error, QueryFileError):
        return _FILE_STATUS.get(error.reason, 400), str(error)
    if isinstance(error, QueryError):
        return 422, str(error)
    if isinstance(error, ItemNotFoundError):
        return 404, str(error)
    if isinstance(error, IndexRebuildingError):  # expected after a start on damaged index files: no error log
        return 503, "the index is being rebuilt from the store after damage; try again shortly (see /health)"
    if isinstance(error, (BatcherClosedError, StoreError, DatabaseCorruptError)):
        log.error("collection unavailable: %s", error)
        return 503, "the collection is unavailable right now; try again shortly"
    # Starlette re-raises it after this answer is sent, and uvicorn logs the traceback once.
    return 500, "internal error (details are in the server log)"


def install_error_handlers(app: FastAPI) -> None:
    """Known errors go through Starlette's exception middleware (answered, not re-raised); the
    catch-all answers 500 and lets the exception reach the server's log."""
    from index.errors import DatabaseCorruptError, StoreError
    from retrieval.errors import ItemNotFoundError, QueryError
    from retrieval.query_batcher import BatcherClosedError

    async def on_known_error(request: Request, error: Exception) -> JSONResponse:
        status, message = translate(error)
        headers = dict(getattr(error, "headers", None) or {})
        if status == 503:
            headers["Retry-After"] = "5"
        return error_response(status, message, headers or None)

    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request refused"
        return error_response(error.status_code, message, getattr(error, "headers", None))

    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(error))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    for known in (ApiError, QueryError, ItemNotFoundError, BatcherClosedError, StoreError, DatabaseCorruptError):
        app.add_exception_handler(known, on_known_error)
    app.add_exception_handler(Exception, on_known_error)
