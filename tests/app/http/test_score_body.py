"""app/http/score_body.py under a real uvicorn: a /score answer that its client reads
slowly keeps the client's quota place until it is written, so a client cannot hold more
finished answers (each its scorer's arrays) than its quota, while another client is
served; the place comes back when the answer is taken or the connection ends."""

from __future__ import annotations

import gc
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.engine.jobs import ScoreJob
from app.gate.connections import uvicorn_options
from app.http.score_body import ScoreAnswer
from app.main import create_app
from app.settings import Settings
from tests.app.support import running_server, wait_for

SLOW = "10.0.0.1"  # the clients, as the trusted local proxy (the test) names them
OTHER = "10.0.0.2"
# ~40,000 positions with top_n 5: an answer of megabytes, far past the socket buffers.
LONG = {"text": "".join(np.random.default_rng(0).choice(list("abcde "), 40_000)), "top_n": 5}
SHORT = {"text": "abc abc", "top_n": 1}


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    changed = Settings(
        **{**settings.model_dump(), "access_log": False, "max_requests_per_client": 1}
    )
    application = create_app(changed)
    with running_server(application, **uvicorn_options(changed.connection_limits())) as url:
        yield url, application


def unread_score(url: str, client: str) -> socket.socket:
    """A /score of LONG from `client` over a socket with a small window that reads only
    the answer's first bytes (which come once the engine has finished the text)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps(LONG).encode()
    head = "\r\n".join(
        [
            "POST /score HTTP/1.1",
            "Host: test",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"X-Forwarded-For: {client}",
            "",
            "",
        ]
    ).encode()
    sock.sendall(head + body)
    sock.settimeout(30)
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def score(http: httpx.Client, client: str) -> httpx.Response:
    return http.post("/score", json=SHORT, headers={"X-Forwarded-For": client})


def test_an_answer_being_read_holds_its_clients_place(server: tuple[str, FastAPI]) -> None:
    url, application = server
    ledger = application.state.service.engine.clients
    with httpx.Client(base_url=url, timeout=30) as http:
        sock = unread_score(url, SLOW)
        try:
            assert ledger.full(SLOW)  # finished by the engine, its answer not yet taken
            again = score(http, SLOW)
            assert again.status_code == 429, again.text  # its place is still taken
            other = score(http, OTHER)
            assert other.status_code == 200, other.text  # another client is served
        finally:
            sock.close()  # the client leaves: the answer will never be written
        assert wait_for(lambda: not ledger.full(SLOW), 10.0)
        assert score(http, SLOW).status_code == 200


def test_an_answer_read_to_its_end_gives_the_place_back(server: tuple[str, FastAPI]) -> None:
    url, application = server
    ledger = application.state.service.engine.clients
    with httpx.Client(base_url=url, timeout=60) as http:
        whole = http.post("/score", json=LONG, headers={"X-Forwarded-For": SLOW})
        assert whole.status_code == 200 and len(whole.json()["logprobs"]) == 40_000
        assert wait_for(lambda: not ledger.full(SLOW), 10.0)
        assert score(http, SLOW).status_code == 200


def test_an_answer_dropped_unsent_gives_the_place_back() -> None:
    released: list[str] = []
    job = ScoreJob(np.arange(3, dtype=np.int32), 0, "tiny", "a")
    job.on_finish(lambda: released.append("a"))
    job.scorer = object()  # type: ignore[assignment]  # scored: an answer to write
    job.finish()

    async def pieces() -> Any:
        yield b"{}"

    answer = ScoreAnswer(pieces(), job)
    assert released == []
    del answer  # never sent (an error between the route and the client)
    gc.collect()
    assert released == ["a"]
