"""Pure-ASGI guards that run before routing: Host header, API key, body size, response headers.

They are plain ASGI rather than `BaseHTTPMiddleware` so that an oversized upload is cut off while
it streams (the app never buffers more than the limit) and so that nothing here adds a thread hop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.errors import CODES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes that answer without a key: the page and its assets carry no data, health is for probes.
PUBLIC_PATHS = ("/", "/health", "/favicon.ico", "/openapi.json", "/docs", "/redoc")
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")
UPLOAD_PATHS = ("/search/image", "/search/audio")
# JSON bodies are small; this still admits a text query far over its length limit, so that the
# client hears "query too long" (422) rather than a bare size refusal.
OTHER_BODY_LIMIT = 2 * 1024 * 1024
KEY_COOKIE = "xmodal_key"

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # The page uses only its own scripts and styles; media and thumbnails come from this origin,
    # recorded or dropped query files from blob: URLs.
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                 b"style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"),
]
# /docs and /redoc (bundled assets, same origin) start their viewers with an inline script, and
# ReDoc runs a web worker from a blob.
DOCS_POLICY = (b"default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
               b"style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; frame-ancestors 'none'")


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"code": CODES.get(status, "error"), "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class SecurityHeaders:
    """`nosniff`, no framing, a strict content security policy, on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"] in ("/docs", "/redoc")
        # The page's modules must come from one release: revalidate them (ETag) on every load.
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", ())}
                extra = [(k, DOCS_POLICY if docs and k == b"content-security-policy" else v)
                         for k, v in SECURITY_HEADERS if k not in present]
                if static and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-cache"))
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostGuard:
    """Answer only to the expected Host names: a DNS-rebinding page cannot reach a loopback server."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.names:
            host = (_header(scope, b"host") or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.names:
                return await send_error(send, 400, "unexpected Host header")
        await self.app(scope, receive, send)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyGuard:
    """With an API key set, every data route needs `Authorization: Bearer KEY` or the page's cookie.

    Only the key's SHA-256 is kept, and digests are compared in constant time.
    """

    def __init__(self, app: ASGIApp, key_hash: bytes | None) -> None:
        self.app = app
        self.key_hash = key_hash

    def _presented(self, scope: Scope) -> str | None:
        authorization = _header(scope, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        for part in (_header(scope, b"cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == KEY_COOKIE and value:
                return value
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (self.key_hash is None or scope["type"] != "http" or path in PUBLIC_PATHS
                or path.startswith(PUBLIC_PREFIXES) or scope.get("method") == "OPTIONS"):
            return await self.app(scope, receive, send)
        presented = self._presented(scope)
        if presented is None or not hmac.compare_digest(hash_key(presented), self.key_hash):
            message = "an API key is required (Authorization: Bearer KEY)" if presented is None else "wrong API key"
            return await send_error(send, 401, message, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class SearchQueue:
    """At most `limit` search requests inside the service at once, from first byte to last; the
    next is told to come back (429, Retry-After) before its body is read or a thread is taken.

    Why: searches are admitted to run by ServerState.admission, inside FastAPI's thread pool, and
    the line in front of the pool has no end: every request of a flood waits there for a thread,
    and a search that arrives behind them waits for all of them. This bounds that line. It is a few times the admission
    limit, so that a burst still queues briefly and a few slow uploads cannot fill it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0  # only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/search/"):
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await send_error(send, 429, f"too many searches waiting ({self.limit}); retry in a second",
                                    [(b"retry-after", b"1")])
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over the limit while it streams, with or without Content-Length.

    A declared length over the limit is refused before a byte is read. Otherwise the body is
    counted as it arrives; past the limit the app's receive fails, and whatever response the app
    then tries to send is replaced by a 413.
    """

    def __init__(self, app: ASGIApp, upload_limit: int, other_limit: int = OTHER_BODY_LIMIT) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.other_limit = other_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] in UPLOAD_PATHS else self.other_limit
        message = f"the request body is larger than the limit of {limit / 2**20:.1f} MiB"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await send_error(send, 413, message, [(b"connection", b"close")])
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return event

        async def guarded_send(event: Message) -> None:
            nonlocal started
            if exceeded:
                if event["type"] == "http.response.start" and not started:
                    started = True
                    await send_error(send, 413, message, [(b"connection", b"close")])
                return  # the app's own answer to the broken body is dropped
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started:
                await send_error(send, 413, message, [(b"connection", b"close")])
        except Exception:
            if not exceeded:
                raise
            if not started:
                await send_error(send, 413, message, [(b"connection", b"close")])
