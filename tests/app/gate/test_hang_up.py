"""app/gate/hang_up.py: a request whose client hangs up before its answer is cancelled,
streamed or not. Under a real uvicorn (both stacks) with the engine held inside a decoding
step, so that every job is still running when its client leaves; and the middleware alone,
against a scripted receive."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app.gate.connections import uvicorn_options
from app.gate.hang_up import HangUpMiddleware
from app.main import create_app
from app.settings import Settings
from tests.app.support import STACKS, running_server, wait_for

REQUESTS = "charrnn_http_requests_total"


@pytest.fixture(scope="module", params=list(STACKS))
def server(settings: Settings, request: pytest.FixtureRequest) -> Iterator[tuple[Any, FastAPI]]:
    changed = Settings(
        **{**settings.model_dump(), **STACKS[request.param], "access_log": False}
    ).model_copy(update={"max_length": 10**5})
    application = create_app(changed)
    with running_server(application, **uvicorn_options(changed.connection_limits())) as url:
        parts = urlsplit(url)
        yield (parts.hostname, parts.port), application


class HeldEngine:
    """The served model's decoding step waits until released (so jobs stay unfinished),
    and every job the service queues is recorded."""

    def __init__(self, service: Any, monkeypatch: pytest.MonkeyPatch):
        self.release = threading.Event()
        self.stepping = threading.Event()
        self.jobs: list[Any] = []
        decoder = service.model().lane.decoder
        step = decoder.step

        def held_step(*args: Any) -> Any:
            self.stepping.set()
            self.release.wait(10)
            return step(*args)

        monkeypatch.setattr(decoder, "step", held_step)
        for name in ("submit", "score"):
            queue = getattr(service, name)

            def recorded(*args: Any, _queue: Any = queue, **kwargs: Any) -> Any:
                job = _queue(*args, **kwargs)
                self.jobs.append(job)
                return job

            monkeypatch.setattr(service, name, recorded)


def post(address: tuple[str, int], path: str, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(address)
    sock.sendall(head + data)
    return sock


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"length": 10**5}),
        ("/v1/completions", {"model": "tiny", "prompt": "ab", "max_tokens": 10**5, "n": 2}),
        ("/score", {"text": "abc " * 5000}),
    ],
)
def test_a_request_answered_at_its_end_is_cancelled_when_its_client_leaves(
    server: tuple[Any, FastAPI], monkeypatch: pytest.MonkeyPatch, path: str, body: dict
) -> None:
    address, application = server
    held = HeldEngine(application.state.service, monkeypatch)
    before = (
        application.state.metrics.registry.get_sample_value(
            REQUESTS, {"method": "POST", "route": path, "status": "499"}
        )
        or 0.0
    )
    blocker = post(address, "/generate/stream", {"length": 10**5})  # holds the engine
    try:
        assert held.stepping.wait(5)
        client = post(address, path, body)
        assert wait_for(lambda: len(held.jobs) >= 2), held.jobs
        mine = held.jobs[1:]
        time.sleep(0.2)
        assert not any(job.cancelled for job in mine)  # waiting for its answer: running
        client.close()
        assert wait_for(lambda: all(job.cancelled for job in mine), limit=2.0)
        assert not held.jobs[0].cancelled  # the stream whose client stays goes on
        # Counted as a request whose client closed it (nginx's 499), not a server error.
        left = {"method": "POST", "route": path, "status": "499"}
        registry = application.state.metrics.registry
        assert wait_for(lambda: registry.get_sample_value(REQUESTS, left) == before + 1)
    finally:
        held.release.set()
        blocker.close()


def test_a_client_that_stays_gets_its_answer(server: tuple[Any, FastAPI]) -> None:
    address, _ = server
    with post(address, "/generate", {"length": 50, "seed": 1}) as sock:
        sock.settimeout(10)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["stats"]["chars"] == 50


# --- the middleware alone -------------------------------------------------------------


def scope_of(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": headers or []}


def scripted(messages: list[Message], gone: asyncio.Event) -> Receive:
    """The messages in turn, then http.disconnect once `gone` is set."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def collect(app: Any, scope: Scope, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await HangUpMiddleware(app)(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_a_hang_up_cancels_the_app_once_the_body_is_in() -> None:
    gone = asyncio.Event()
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        seen.append(await receive())
        gone.set()  # the client leaves while the app works
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    body = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]
    headers = [(b"content-length", b"2")]
    started = time.monotonic()
    assert await collect(app, scope_of(headers), scripted(body, gone)) == []
    assert time.monotonic() - started < 1
    assert seen == [*body, "cancelled"]


@pytest.mark.anyio
async def test_a_request_without_a_body_is_watched_once_its_one_message_is_read() -> None:
    gone = asyncio.Event()
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        gone.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    request = {"type": "http.request", "body": b"", "more_body": False}
    assert await collect(app, scope_of(), scripted([request], gone)) == []
    assert seen == [request, "cancelled"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_cancellation_from_elsewhere_goes_on() -> None:
    """The server cancelling a request (shutting down) is not swallowed as a hang-up."""
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        started.set()
        await asyncio.sleep(10)

    request = {"type": "http.request", "body": b"", "more_body": False}
    runner = asyncio.create_task(collect(app, scope_of(), scripted([request], asyncio.Event())))
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


@pytest.mark.anyio
async def test_a_hang_up_after_the_answer_cancels_nothing() -> None:
    gone = asyncio.Event()
    finished: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        gone.set()
        await asyncio.sleep(0.05)  # clean-up after the answer runs to its end
        finished.append(await receive())  # the disconnect the listener heard

    request = {"type": "http.request", "body": b"", "more_body": False}
    sent = await collect(app, scope_of(), scripted([request], gone))
    assert finished == [{"type": "http.disconnect"}]
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


@pytest.mark.anyio
async def test_other_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    async def never() -> Message:
        raise AssertionError("not read")

    await HangUpMiddleware(app)({"type": "lifespan"}, never, None)  # type: ignore[arg-type]
    assert calls == ["lifespan"]
