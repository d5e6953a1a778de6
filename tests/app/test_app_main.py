"""app/main.py: the app factory, its lifespan, and the lazy `app` for uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import app.main
from app.main import create_app
from app.schemas import GenerateRequest
from app.settings import Settings

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
        assert (await c.get("/health")).json() == {"status": "ok"}
        assert (await c.get("/model")).json()["name"] == "tiny"
    assert application.state.generator is None  # unloaded at shutdown


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
        generator = application.state.generator
        job = generator.validate(GenerateRequest(length=300))
        generation = generator.stream(job)
        await generation.__anext__()
    assert generator.active == 0
