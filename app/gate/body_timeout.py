"""BODY_TIMEOUT_SECONDS: a 408 for a request body that does not arrive in time.

The clock starts when the request's headers are in; the whole body must follow within the
limit, however it is split (a body trickled a byte at a time cannot reset it). Only waits
for the body while no response has begun are timed: a stream's later wait for the client
to hang up is not. The 408 is raised from inside the route, like BodyTooLarge, so it comes
in the route's own error shape (OpenAI's under /v1), and carries `Connection: close`: the
rest of the body would otherwise keep the connection. A body the app answers without
reading is left to app/gate/connections.py.
"""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class BodyTimeout(HTTPException):
    """Raised from `receive` once the body is late (an HTTPException: see
    app/gate/body_limit.py)."""

    def __init__(self, seconds: float):
        detail = f"request body not received within {seconds:g} s (BODY_TIMEOUT_SECONDS)"
        super().__init__(408, detail)


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_complete = started = timed_out = False

        async def timed_receive() -> Message:
            nonlocal body_complete, timed_out
            if body_complete or started:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                if started:  # the response began meanwhile: too late for a 408
                    return await receive()
                timed_out = True
                raise BodyTimeout(self.seconds) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if timed_out and CLOSE not in message.get("headers", []):
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyTimeout as error:
            # Only reached when the app let it escape (a route reading the body by hand).
            if started:
                raise
            await _send_408(send, error)


async def _send_408(send: Send, error: BodyTimeout) -> None:
    body = json.dumps({"detail": error.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        CLOSE,
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})
