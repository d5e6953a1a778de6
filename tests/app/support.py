"""Helpers the app tests import (`from support import ...`): an ASGI client with the
lifespan entered, a real uvicorn server in a thread, and an event-stream parser. Fixtures
live in conftest.py; a helper module of its own name keeps these imports unambiguous
beside the other test folders' conftest files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from app.engine.jobs import Job

Event = tuple[str, Any]  # (event name, JSON-decoded data)

# uvicorn's two stacks, as settings: the tests of the connection guards run under both.
STACKS = {
    "httptools-uvloop": {"http_parser": "httptools", "event_loop": "uvloop"},
    "h11-asyncio": {"http_parser": "h11", "event_loop": "asyncio"},
}

ClientWith = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@contextlib.asynccontextmanager
async def serve_asgi(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, its lifespan entered (ASGITransport alone does not run it)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@contextlib.contextmanager
def running_server(application: FastAPI, **options: Any) -> Iterator[str]:
    """The base URL of `application` under uvicorn on a free port, in a thread; stopped
    (gracefully, lifespan included) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        application, log_level="warning", timeout_graceful_shutdown=2, **options
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        runner.should_exit = True
        thread.join(10)
        sock.close()


def parse_sse(text: str) -> list[Event]:
    """(event, data) pairs of an event stream; comments (keep-alives) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def count_chunks(monkeypatch: Any) -> list[int]:
    """Patch Job.chunks to note each chunk a handler reads (a wake-up of the handler
    each); → the list of their lengths, growing as they are read."""
    read: list[int] = []
    chunks = Job.chunks

    async def counted(self: Job, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for chunk in chunks(self, *args, **kwargs):
            read.append(len(chunk.text))
            yield chunk

    monkeypatch.setattr(Job, "chunks", counted)
    return read


def record_pacing(engine: Any, monkeypatch: Any) -> list[str | None]:
    """Patch the engine's clients' chunk_interval to note the client each stream asks it for (and
    to pace nothing); → the list of those clients, growing as they ask."""
    asked: list[str | None] = []

    def interval(client: str | None = None) -> float:
        asked.append(client)
        return 0.0

    monkeypatch.setattr(engine.clients, "chunk_interval", interval)
    return asked


def wait_for(condition: Callable[[], Any], limit: float = 5.0) -> bool:
    """Whether `condition()` came true within `limit` seconds (looked at every 10 ms)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def until(condition: Callable[[], Any], seconds: float = 5.0) -> None:
    """Wait on the event loop until `condition()` is true; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)
