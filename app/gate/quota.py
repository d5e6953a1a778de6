"""MAX_REQUESTS_PER_CLIENT, answered early: a client that already has its quota of requests
in the engine gets its 429 before its body is read, parsed and validated.

The engine counts the requests (app/engine/engine.py) and refuses one past the quota anyway; this
middleware only makes the refusal cheap, so a client hammering the service while at its
quota costs the event loop a response line, not a request's whole path through the app.
The connection is closed after the 429, so its unread body need not be drained.

`EarlyRefusal` makes it cheaper still for a client connecting straight to the service:
app/gate/connections.py asks it about the first bytes of each new connection and, when the
request line names an engine route and the peer is at its quota, writes the same 429
itself, before the request is parsed or any of the app runs (a flood of such requests
cost the event loop, and so the decoding thread waiting for the GIL, about half its time
through the whole stack). A request that arrives any other way (behind a trusted proxy,
on a kept-alive connection, a request line split over packets) gets the middleware's.
Both ask about the client app/gate/identity.py resolved: a connection's peer, or behind a
trusted proxy the client its X-Forwarded-For names.

Either way the 429 is held for QUOTA_REFUSAL_DELAY_SECONDS first. A client at its quota
that retries as soon as it is refused (ignoring Retry-After) would otherwise cost the
event loop a connection at every turn of its loop, as fast as the answers come back;
held, each of its connections tries once per delay, for the price of a timer. Against a
client that does not wait for its answers it saves nothing; a held connection stays open
no longer than one that sends nothing may (the delay is at most HEADER_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.engine.engine import DecodingEngine
from app.gate.identity import client_of

# Seconds a refused client is asked to wait (Retry-After): at its quota, or when every row
# and queue place is taken.
RETRY_AFTER_SECONDS = 1

# The routes that submit work to the engine (GET /generate/stream included).
ENGINE_PATHS = frozenset(
    {"/generate", "/generate/stream", "/score", "/v1/completions", "/v1/chat/completions"}
)


class ClientQuotaMiddleware:
    """Refuses a request to an engine route from a client at its quota, `delay` seconds
    after it arrived (QUOTA_REFUSAL_DELAY_SECONDS), before its body is read."""

    def __init__(
        self, app: ASGIApp, engine: Callable[[], DecodingEngine | None], delay: float = 0.0
    ):
        self.app = app
        self.engine = engine  # None while the model is not loaded
        self.delay = delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ENGINE_PATHS:
            engine = self.engine()
            client = client_of(scope)
            if engine is not None and client is not None and engine.clients.full(client):
                limit = engine.clients.limit
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                await _refuse(send, scope["path"], limit)
                return
        await self.app(scope, receive, send)


Refusal = tuple[list[tuple[bytes, bytes]], bytes]  # a 429's headers and body


@functools.lru_cache(maxsize=64)
def refusal(path: str, limit: int) -> Refusal:
    """The 429 for a request to `path` from a client with `limit` requests in the engine
    (made once per route and limit: a flood asks for it at every connection)."""
    message = f"too many requests: this client already has {limit} requests running or waiting"
    if path.startswith("/v1/"):  # OpenAI's error shape, as app/http/openai_routes.py answers
        error = {"message": message, "type": "invalid_request_error", "param": None}
        body = json.dumps({"error": {**error, "code": "rate_limit_exceeded"}}).encode()
    else:
        body = json.dumps({"detail": f"{message}; retry when one ends"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


async def _refuse(send: Send, path: str, limit: int) -> None:
    headers, body = refusal(path, limit)
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EarlyRefusal:
    """`(the connection's client, its first bytes)` → the 429 to write at once, or None
    to serve the request as usual (the peer is under its quota, the route submits no
    work, or the request line is not complete yet)."""

    def __init__(self, engine: Callable[[], DecodingEngine | None]):
        self.engine = engine

    def __call__(self, client: str, data: bytes) -> Refusal | None:
        line, complete, _ = data.partition(b"\r\n")
        if not complete:
            return None
        parts = line.split(b" ")
        method_ok = parts[0].isalpha() and parts[0].isupper()
        if len(parts) != 3 or not method_ok or not parts[2].startswith(b"HTTP/1."):
            return None
        path = parts[1].split(b"?", 1)[0].decode("latin-1")
        if path not in ENGINE_PATHS:
            return None
        engine = self.engine()
        if engine is None or not engine.clients.full(client):
            return None
        return refusal(path, engine.clients.limit)
