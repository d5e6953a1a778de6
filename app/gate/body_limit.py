"""MAX_BODY_BYTES: a 413 for request bodies larger than the limit.

Checked when the route reads the body: at its first chunk when Content-Length says too
much, else as the chunks add up (chunked uploads, or a client sending more than it
declared). So the app never holds more than the limit plus one network chunk, and the 413
comes from inside the route: in its own error shape (OpenAI's under /v1), counted under
its name in the metrics. Routes that read no body never see the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit. An HTTPException, so FastAPI's
    body parsing lets it through (it turns other errors into 400s) and the app's handlers
    answer it like any other 413."""

    def __init__(self, limit: int, setting: str = "MAX_BODY_BYTES"):
        super().__init__(413, f"request body larger than {limit} bytes ({setting})")


class BodyLimitMiddleware:
    """`max_body_bytes` for every path but those in `path_limits` ({path: (limit, the
    setting it comes from)}: POST /score takes a whole text, MAX_SCORE_CHARS sets its own)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        path_limits: Mapping[str, tuple[int, str]] | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.path_limits.get(
            scope["path"], (self.max_body_bytes, "MAX_BODY_BYTES")
        )
        declared = _content_length(scope) or 0
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if max(received, declared) > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as error:
            # Only reached when the app let it escape (a route reading the body by hand).
            if started:
                raise
            await _send_413(send, error)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed one before we see it
    return None


async def _send_413(send: Send, error: BodyTooLarge) -> None:
    body = json.dumps({"detail": error.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
