"""app/gate/body_timeout.py on its own: the deadline spans the whole body, only body waits
before a response are timed, and a timeout the app lets escape still gets its 408.
(Under uvicorn, through every route: tests/app/gate/test_connections.py.)"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.gate.body_timeout import BodyTimeoutMiddleware

pytestmark = pytest.mark.anyio

SECONDS = 0.2
SCOPE: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}


def trickle(interval: float) -> Receive:
    """A client sending one byte every `interval`, forever."""

    async def receive() -> Message:
        await asyncio.sleep(interval)
        return {"type": "http.request", "body": b"x", "more_body": True}

    return receive


def whole_body_then_hang_up(after: float) -> Receive:
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.sleep(after)
        return {"type": "http.disconnect"}

    return receive


async def read_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app reading the body by hand, then answering 200."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def run(app: object, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await BodyTimeoutMiddleware(app, SECONDS)(SCOPE, receive, send)  # type: ignore[arg-type]
    return sent


async def test_a_trickle_cannot_reset_the_deadline() -> None:
    started = time.monotonic()
    sent = await run(read_body, trickle(SECONDS / 5))  # a byte well within each wait
    assert SECONDS * 0.9 < time.monotonic() - started < SECONDS * 3
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "BODY_TIMEOUT_SECONDS" in json.loads(sent[1]["body"])["detail"]


async def test_a_body_in_time_is_passed_on() -> None:
    sent = await run(read_body, whole_body_then_hang_up(after=10))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    assert (b"connection", b"close") not in sent[0]["headers"]


async def test_waits_after_the_body_or_the_response_start_are_not_timed() -> None:
    async def reads_then_waits(scope: Scope, receive: Receive, send: Send) -> None:
        # Reads the body, then waits (past the deadline) for the client to hang up.
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = await run(reads_then_waits, whole_body_then_hang_up(after=SECONDS * 3))
    assert sent[0]["status"] == 200

    async def starts_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()  # the body trickles, but the response has begun
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = await run(starts_first, trickle(SECONDS * 3))
    assert sent[0]["status"] == 200


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def never(*_: object) -> None:
        raise AssertionError("not called")

    await BodyTimeoutMiddleware(app, SECONDS)({"type": "lifespan"}, never, never)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
