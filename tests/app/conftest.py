"""Shared fixtures: a tiny untrained checkpoint, the service serving it, an HTTP client
of the app (through httpx's ASGI transport, lifespan included), an SSE parser, and ways to
make the engine fail. Helpers that tests import are in support.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from app.engine.service import ModelService
from app.main import create_app, load_service
from app.settings import Settings
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import ClientWith, Event, parse_sse, serve_asgi, until

CORPUS = string.ascii_letters + " .,;:!?'\n"
INFO = {"val_loss": 1.25, "val_bits_per_char": 1.8, "corpus": "tiny", "corpus_chars": 12345}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Sample with one intra-op thread, as a loaded CI box runs B=1 steps ~10× faster that
    way (idle OpenMP workers spin on the cores the sampler needs); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def uvicorn_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's own log config, applied by any test that runs a server in this process,
    stops its loggers' records at "uvicorn"; caplog listens at the root."""
    for name in ("uvicorn", "uvicorn.error"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # what uvicorn runs; the app's hand-off uses asyncio directly


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary.from_text(CORPUS)


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory, vocab: Vocabulary) -> Path:
    """An untrained 2×16 LSTM: its text is noise, but every API path works with it."""
    torch.manual_seed(0)  # the same weights every run: tests that compare texts repeat
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=2))
    path = tmp_path_factory.mktemp("checkpoints") / "tiny.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab, info=INFO), path)
    return path


@pytest.fixture(scope="session")
def settings(checkpoint_path: Path) -> Settings:
    return Settings(
        checkpoint=checkpoint_path,
        device="cpu",
        max_length=300,
        max_prime_length=50,
        default_length=40,
        shutdown_grace_seconds=2,  # a test that leaves a stream running waits no longer
        quota_refusal_delay_seconds=0,  # refused at once, but where a test times the delay
    )


@pytest.fixture(scope="session")
def service(settings: Settings) -> ModelService:
    return load_service(settings)


@pytest.fixture
async def client(settings: Settings, service: ModelService) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_asgi(create_app(settings, service)) as http:
        yield http


@pytest.fixture
def client_with(settings: Settings, service: ModelService) -> ClientWith:
    """`async with client_with(api_key=SecretStr("k")) as http:` the app, settings changed."""

    def make(**changes: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return serve_asgi(create_app(settings.model_copy(update=changes), service))

    return make


@pytest.fixture(scope="session")
def sse() -> Callable[[str], list[Event]]:
    """The event-stream parser (a fixture, since tests/ is not a package)."""
    return parse_sse


@pytest.fixture
def failing_step(service: ModelService, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """`failing_step(n)`: the model's batched decoding step fails from its n-th call on
    (an unattributable failure: every decoding row of that step fails)."""

    def arm(after: int) -> None:
        decoder = service.model().lane.decoder
        real = decoder.step
        calls = 0

        def step(*args: Any) -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls >= after:
                raise RuntimeError("out of memory")
            return real(*args)

        monkeypatch.setattr(decoder, "step", step)

    return arm


@pytest.fixture
async def regex_service(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, ModelService]]:
    """The app with a 0.3 s compile deadline; its compile workers already started."""
    quick = settings.model_copy(update={"regex_compile_seconds": 0.3})
    service = load_service(quick)
    served = service.model()
    await asyncio.to_thread(served.regexes.get, "[ab]")
    await until(lambda: served.regexes.idle_workers == 2, 30)
    async with serve_asgi(create_app(quick, service)) as http:
        yield http, service
    served.regexes.close()
    service.stop()
