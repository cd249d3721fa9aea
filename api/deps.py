"""Typed dependencies of the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.errors import ApiError
from api.state import ServerState


def get_state(request: Request) -> ServerState:
    state = getattr(request.app.state, "xmodal", None)
    if state is None:
        raise ApiError(503, "the service is starting or stopping; try again shortly", {"Retry-After": "2"})
    return state


State = Annotated[ServerState, Depends(get_state)]
