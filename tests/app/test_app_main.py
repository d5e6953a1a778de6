"""app/main.py: the app factory, its lifespan, and the lazy `app` for uvicorn."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI

import app.main
from app.engine.service import ModelService
from app.http.requests import generation_params
from app.http.schemas import GenerateRequest
from app.main import create_app
from app.settings import Settings
from tests.app.support import Event, parse_sse

pytestmark = pytest.mark.anyio


def asgi_client(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


def test_importing_builds_nothing() -> None:
    # `app` exists only through the module's __getattr__, made when asked for.
    assert "app" not in vars(app.main)
    with pytest.raises(AttributeError):
        _ = app.main.no_such_thing


async def test_app_is_made_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path
) -> None:
    # What `uvicorn app.main:app` does: settings from the environment, model loaded first.
    monkeypatch.setenv("CHECKPOINT", str(checkpoint_path))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("MAX_LENGTH", "777")
    monkeypatch.setenv("ACCESS_LOG", "false")
    application = app.main.app
    assert isinstance(application, FastAPI)
    assert application.state.settings.max_length == 777
    async with application.router.lifespan_context(application), asgi_client(application) as c:
        info = (await c.get("/model")).json()
    assert info["name"] == "tiny" and info["limits"]["max_length"] == 777


def test_app_with_a_bad_checkpoint_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHECKPOINT", str(tmp_path / "missing.safetensors"))
    with pytest.raises(SystemExit) as caught:
        _ = app.main.app
    assert str(caught.value.code) == (
        f"error: cannot load the model: checkpoint not found: {tmp_path / 'missing.safetensors'}"
    )


async def test_health_is_503_until_loaded(settings: Settings) -> None:
    application = create_app(settings)
    async with asgi_client(application) as client:
        response = await client.get("/health")
        assert response.status_code == 503
        assert (await client.post("/generate", json={})).status_code == 503


async def test_lifespan_loads_the_checkpoint(settings: Settings) -> None:
    application = create_app(settings)
    async with application.router.lifespan_context(application), asgi_client(application) as c:
        assert (await c.get("/health")).json() == {"status": "ok", "problems": {}}
        assert (await c.get("/model")).json()["name"] == "tiny"
    assert application.state.service is None  # unloaded at shutdown


async def test_a_bad_checkpoint_stops_start_up_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    application = create_app(Settings(checkpoint=tmp_path / "missing.safetensors"))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as caught:
        async with application.router.lifespan_context(application):
            pass
    assert caught.value.code == 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "checkpoint not found" in message and "\n" not in message


async def test_shutdown_stops_running_generations(settings: Settings) -> None:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        service = application.state.service
        params = generation_params(service.model(), service.limits, GenerateRequest(length=300))
        job = service.submit(service.model(), params)
        await job.chunks().__anext__()
    assert service.active == 0 and job.done


def slow_engine(service: ModelService, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make each character of a decoding call take `seconds`, so a stream outlasts the
    shutdown's start."""
    decoder = service.model().lane.decoder
    step = decoder.step

    def slow_step(*args: Any) -> np.ndarray:
        rows = step(*args)
        time.sleep(seconds * decoder.block.steps)
        return rows

    monkeypatch.setattr(decoder, "step", slow_step)


async def stream_during_shutdown(
    settings: Settings, service: ModelService, grace: float, length: int
) -> tuple[list[Event], list[httpx.Response], float]:
    """Start a stream, shut the app down meanwhile, and try new requests while it drains:
    (the stream's events, the refused responses, seconds the shutdown took)."""
    application = create_app(settings.model_copy(update={"shutdown_grace_seconds": grace}), service)
    context = application.router.lifespan_context(application)
    await context.__aenter__()
    async with asgi_client(application) as client:
        body = {"length": length, "seed": 1}
        streaming = asyncio.create_task(client.post("/generate/stream", json=body))
        with anyio.fail_after(5):
            while not service.active:
                await anyio.sleep(0.005)
        started = time.perf_counter()
        stopping = asyncio.create_task(context.__aexit__(None, None, None))
        with anyio.fail_after(5):
            while not application.state.draining:
                await anyio.sleep(0.005)
        refused = [await client.post("/generate", json={"length": 5}), await client.get("/health")]
        events = parse_sse((await streaming).text)
        await stopping
    return events, refused, time.perf_counter() - started


async def test_shutdown_lets_running_streams_finish(
    settings: Settings, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_engine(service, monkeypatch, 0.002)  # 150 chars: about 0.3 s
    events, refused, _ = await stream_during_shutdown(settings, service, 5.0, 150)
    assert events[-1][0] == "done" and events[-1][1]["stats"]["chars"] == 150
    for response in refused:  # new work goes elsewhere meanwhile
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "shutting down" in response.json()["detail"]


async def test_shutdown_waits_no_longer_than_the_grace(
    settings: Settings, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_engine(service, monkeypatch, 0.01)  # 300 chars: about 3 s
    events, _, seconds = await stream_during_shutdown(settings, service, 0.2, 300)
    assert seconds < 1.5
    assert events[-1] == ("error", {"message": "the service is shutting down"})
    assert service.active == 0


async def test_cors_origins(settings: Settings, service: ModelService) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = settings.model_copy(update={"cors_origins": ("https://ok.example",)})
    async with asgi_client(create_app(allowed, service)) as client:
        ok = await client.options(
            "/generate", headers={"Origin": "https://ok.example", **preflight}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = await client.options(
            "/generate", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers
    async with asgi_client(create_app(settings, service)) as client:  # none by default
        response = await client.get("/health", headers={"Origin": "https://ok.example"})
        assert "access-control-allow-origin" not in response.headers
