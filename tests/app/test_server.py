"""The service under real uvicorn: app.main:app made from the environment, streamed over
TCP with httpx, and a client that hangs up mid-stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import app.main
from tests.app.support import running_server

Parse = Callable[[str], list[tuple[str, Any]]]


@pytest.fixture(scope="module")
def server(checkpoint_path: Path) -> Iterator[tuple[FastAPI, str]]:
    """(app, base URL) of a uvicorn server on a free port, in a thread of this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHECKPOINT", str(checkpoint_path))
        patch.setenv("DEVICE", "cpu")
        patch.setenv("MAX_LENGTH", str(10**7))  # long enough to still be running at hang-up
        patch.setenv("ACCESS_LOG", "false")  # no JSON lines on the test's stdout
        application = app.main.app
    with running_server(application) as base_url:
        yield application, base_url


def test_health_and_stream_over_tcp(server: tuple[FastAPI, str], sse: Parse) -> None:
    _, base_url = server
    body = {"prime": "hello", "length": 150, "seed": 21}
    with httpx.Client(base_url=base_url, timeout=20) as client:
        assert client.get("/health").json() == {"status": "ok", "problems": {}}
        expected = client.post("/generate", json=body).json()["text"]
        for method, options in (("GET", {"params": body}), ("POST", {"json": body})):
            with client.stream(method, "/generate/stream", **options) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = sse("".join(response.iter_text()))
            text = "".join(data for name, data in events if name == "chars")
            assert text == expected, method
            assert events[-1][0] == "done" and events[-1][1]["stats"]["chars"] == 150


def test_hanging_up_stops_the_generation(server: tuple[FastAPI, str]) -> None:
    application, base_url = server
    service = application.state.service
    params = {"length": 10**6}
    with (
        httpx.Client(base_url=base_url, timeout=20) as client,
        client.stream("GET", "/generate/stream", params=params) as response,
    ):
        lines = response.iter_lines()
        first = [next(lines) for _ in range(4)]
        assert first[0] == "event: chars" and json.loads(first[1][len("data: ") :])
        assert service.active == 1
        # The event loop is not blocked by the running generation.
        started = time.monotonic()
        assert httpx.get(f"{base_url}/health").status_code == 200
        assert time.monotonic() - started < 2
    # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 1.0
    while service.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.active == 0
