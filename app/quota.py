"""MAX_REQUESTS_PER_CLIENT, answered early: a client that already has its quota of requests
in the engine gets its 429 before its body is read, parsed and validated.

The engine counts the requests (app/engine.py) and refuses one past the quota anyway; this
middleware only makes the refusal cheap, so a client hammering the service while at its
quota costs the event loop a response line, not a request's whole path through the app.
The connection is closed after the 429, so its unread body need not be drained.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.engine import DecodingEngine
from app.errors import RETRY_AFTER_SECONDS

# The routes that submit work to the engine (GET /generate/stream included).
ENGINE_PATHS = frozenset({"/generate", "/generate/stream", "/score", "/v1/completions"})


class ClientQuotaMiddleware:
    def __init__(self, app: ASGIApp, engine: Callable[[], DecodingEngine | None]):
        self.app = app
        self.engine = engine  # None while the model is not loaded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ENGINE_PATHS:
            engine = self.engine()
            client = scope.get("client")
            if engine is not None and client is not None and engine.client_full(client[0]):
                await _refuse(send, scope["path"], engine.config.max_requests_per_client)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, path: str, limit: int) -> None:
    message = f"too many requests: this client already has {limit} requests running or waiting"
    if path.startswith("/v1/"):  # OpenAI's error shape, as app/openai_routes.py answers
        error = {"message": message, "type": "invalid_request_error", "param": None}
        body = json.dumps({"error": {**error, "code": "rate_limit_exceeded"}})
    else:
        body = json.dumps({"detail": f"{message}; retry when one ends"})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
