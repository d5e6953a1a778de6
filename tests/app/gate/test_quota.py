"""app/gate/quota.py: a client at its quota gets its 429 before its request is read (the
middleware), or from its connection's first bytes (EarlyRefusal; under a real server in
tests/app/gate/test_connections.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.engine.config import EngineConfig
from app.engine.service import ModelService
from app.gate.quota import EarlyRefusal
from app.main import create_app
from app.settings import Settings
from tests.app.support import serve_asgi

pytestmark = pytest.mark.anyio


@pytest.fixture
def full(service: ModelService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.engine.clients, "full", lambda client: client == "127.0.0.1")


async def test_a_client_at_its_quota_is_refused_early(
    client: httpx.AsyncClient, full: None
) -> None:
    # Not even a valid body: the refusal comes before the body is read or checked.
    for path in ("/generate", "/generate/stream", "/score"):
        response = await client.post(path, content=b"{not json")
        assert response.status_code == 429, path
        assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
        assert "too many requests" in response.json()["detail"]
    openai = await client.post("/v1/completions", content=b"{")
    assert openai.status_code == 429
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    # What does not submit work is not refused.
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/model")).status_code == 200


async def test_the_refusal_is_held_for_the_delay(
    settings: Settings, service: ModelService, full: None
) -> None:
    # QUOTA_REFUSAL_DELAY_SECONDS: the 429 waits; meanwhile the app answers everyone else.
    delay = 0.5
    app = create_app(settings.model_copy(update={"quota_refusal_delay_seconds": delay}), service)
    async with serve_asgi(app) as http:
        started = time.monotonic()
        refusal = asyncio.create_task(http.post("/generate", content=b"{}"))
        health = await http.get("/health")
        assert health.status_code == 200 and time.monotonic() - started < delay / 2
        assert not refusal.done()
        assert (await refusal).status_code == 429
        assert time.monotonic() - started >= delay - 0.05  # a loop's timer may round early


async def test_other_clients_are_not_refused(
    service: ModelService, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.engine.clients, "full", lambda client: client == "10.9.9.9")
    assert (await client.post("/generate", json={"length": 3})).status_code == 200


def test_client_full_follows_the_engines_count(service: ModelService) -> None:
    engine = service.engine
    assert not engine.clients.full("10.1.1.1")
    engine.clients._requests["10.1.1.1"] = engine.clients.limit
    try:
        assert engine.clients.full("10.1.1.1")
    finally:
        del engine.clients._requests["10.1.1.1"]


class FullEngine:
    """An engine stand-in whose clients in `full` are at their quota."""

    def __init__(self, *full: str):
        self.clients = FullClients(set(full))
        self.config = EngineConfig(max_requests_per_client=3)


class FullClients:
    limit = 3

    def __init__(self, full: set[str]):
        self.at_quota = full

    def full(self, client: str) -> bool:
        return client in self.at_quota


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"POST /generate HTTP/1.1\r\nHost: x\r\n",
        b"POST /generate/stream HTTP/1.1\r\n",
        b"GET /generate/stream?prime=a&length=5 HTTP/1.1\r\n\r\n",
        b"POST /score HTTP/1.0\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{",
    ],
)
def test_early_refusal_of_a_full_client_on_an_engine_route(first_bytes: bytes) -> None:
    refuse = EarlyRefusal(lambda: FullEngine("10.0.0.1"))  # type: ignore[arg-type, return-value]
    answer = refuse("10.0.0.1", first_bytes)
    assert answer is not None
    headers, body = answer
    assert (b"retry-after", b"1") in headers and (b"connection", b"close") in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    assert b"3 requests running or waiting" in body
    assert (b'"rate_limit_exceeded"' in body) == (b"/v1/" in first_bytes)
    assert refuse("10.0.0.2", first_bytes) is None  # another client: served as usual


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET /health HTTP/1.1\r\n",  # no work for the engine
        b"POST /generate",  # the request line is not complete yet
        b"POST /generate HTTP/1.1",
        b"POST  /generate HTTP/1.1\r\n",  # not a request line h11 would accept
        b"POST /generate\r\n",
        b"\xff\xfe /generate HTTP/1.1\r\n",
        b"POST /generated HTTP/1.1\r\n",
        b"",
    ],
)
def test_anything_else_is_left_to_the_app(first_bytes: bytes) -> None:
    refuse = EarlyRefusal(lambda: FullEngine("10.0.0.1"))  # type: ignore[arg-type, return-value]
    assert refuse("10.0.0.1", first_bytes) is None


def test_no_early_refusal_while_no_model_is_loaded() -> None:
    assert EarlyRefusal(lambda: None)("10.0.0.1", b"POST /generate HTTP/1.1\r\n") is None
