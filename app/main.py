"""The FastAPI application: `create_app(settings)` builds it; its lifespan loads the model.

Two ways to serve it, both ending at once with a one-line error on a bad checkpoint:

    python -m app [--port 8000 ...]     options override the environment (app/__main__.py)
    uvicorn app.main:app                settings from the environment only

Connection timeouts and the connection limit (app/gate/connections.py, docs/limits.md) come with
`python -m app`; under `uvicorn app.main:app`, uvicorn's own flags set them instead.

`app` is not made at import: the module's __getattr__ builds it when uvicorn asks for it,
so `import app.main` stays cheap and side-effect free. Both entry points load the model
before the port is bound (`serving_app`); a bare `create_app(settings)` loads it in the
lifespan instead (tests, `uvicorn --factory app.main:create_app`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

from app.engine.engine import DecodingEngine, EngineBusy
from app.engine.registry import Poller
from app.engine.service import ModelService
from app.gate.access_log import AccessLogMiddleware, configure_access_logger
from app.gate.body_limit import BodyLimitMiddleware
from app.gate.body_timeout import BodyTimeoutMiddleware
from app.gate.clients import ClientLedger
from app.gate.hang_up import HangUpMiddleware
from app.gate.identity import ClientIdentityMiddleware
from app.gate.log_limit import limited_logs
from app.gate.quota import ClientQuotaMiddleware
from app.http import openai_routes, playground
from app.http.errors import engine_busy, validation_error
from app.http.metrics import Metrics, MetricsMiddleware
from app.http.metrics import router as metrics_router
from app.http.routes import router
from app.settings import Settings
from model.allocator import return_freed_memory

# uvicorn configures this logger, so our lines come out in its stream and format.
logger = logging.getLogger("uvicorn.error")

DESCRIPTION = """
Character-level LSTM text generation. `POST /generate` returns the text at once;
`/generate/stream` (POST with a JSON body, or GET with query parameters for a browser's
`EventSource`) sends it as server-sent events while it is sampled. Every response reports
the seed it used: pass it back to get the same text again. `/v1/completions` and
`/v1/models` speak OpenAI's API (characters for tokens); `/` is a playground page and
`/metrics` has Prometheus metrics. With API_KEY set, send `Authorization: Bearer <key>`.
"""


def load_service(settings: Settings) -> ModelService:
    """The model(s) the settings name, on their device. Raises CheckpointError / ValueError."""
    torch.set_num_threads(settings.torch_threads)  # process-wide: the service owns the process
    return_freed_memory()  # so are its freed arrays: back to the system (model/allocator.py)
    engine = settings.engine_config()
    return ModelService.load(
        settings.checkpoint,
        settings.device,
        settings.limits(),
        engine,
        ClientLedger(engine),
        settings.regex_limits(),
        settings.stall_seconds,
        models_dir=settings.models_dir,
        default_model=settings.default_model,
        max_loaded_models=settings.max_loaded_models,
    )


def create_app(settings: Settings | None = None, service: ModelService | None = None) -> FastAPI:
    """The service. The lifespan loads the model `settings` name, unless `service` is
    given already loaded."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = service
        if loaded is None:
            try:
                loaded = await anyio.to_thread.run_sync(load_service, settings)
            except (ValueError, OSError) as error:  # bad checkpoint, device, or unreadable file
                logger.error("cannot load the model: %s", error)
                raise SystemExit(1) from None
        served = loaded.model()
        if settings.trusted_proxies().everyone:
            logger.warning(
                "FORWARDED_ALLOW_IPS=*: every peer's X-Forwarded-For is believed, so any "
                "client can name itself and escape its per-client limits; name the proxies"
            )
        logger.info(
            "serving %s (default: %s on %s)",
            ", ".join(loaded.registry.names),
            served.name,
            served.device,
        )
        loaded.start()
        poller = None
        if settings.models_poll_seconds > 0:
            poller = Poller(loaded.registry, settings.models_poll_seconds)
            poller.start()
        # The libraries and the model are loaded for good: keep their millions of objects
        # out of the garbage collector's full passes, which otherwise stall the event loop
        # for ~0.3 s at the first burst of requests.
        gc.freeze()
        app.state.service = loaded
        try:
            with limited_logs(settings.log_repeats_per_minute):  # while requests come in
                yield
        finally:
            if poller is not None:
                poller.stop()
            # New work is refused (503) while running streams get the grace period.
            app.state.draining = True
            await drain(loaded, settings.shutdown_grace_seconds)
            app.state.service = None
            await anyio.to_thread.run_sync(loaded.stop)
            app.state.draining = False

    app = FastAPI(
        title="char-rnn text generation",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.draining = False
    app.state.metrics = Metrics(lambda: engine_of(app))
    # First: its GET /metrics (rendered off the event loop) is the one routing finds.
    app.include_router(metrics_router)
    app.include_router(router)
    app.include_router(openai_routes.router)
    app.include_router(playground.router)
    playground.mount_static(app)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(EngineBusy, engine_busy)
    # Each add wraps the ones before: the access log sees every response, 413s included.
    # First, so innermost: a request whose client hung up is cancelled inside the others.
    app.add_middleware(HangUpMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        path_limits={"/score": (settings.max_score_body_bytes, "MAX_SCORE_CHARS")},
    )
    app.add_middleware(BodyTimeoutMiddleware, seconds=settings.body_timeout_seconds)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(
        ClientQuotaMiddleware,
        engine=lambda: engine_of(app),
        delay=settings.quota_refusal_delay_seconds,
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.access_log:
        app.add_middleware(AccessLogMiddleware)
    # Last, so first to run: every middleware and route after it sees the resolved client.
    app.add_middleware(ClientIdentityMiddleware, proxies=settings.trusted_proxies())
    return app


def engine_of(app: FastAPI) -> DecodingEngine | None:
    service: ModelService | None = app.state.service
    return service.engine if service is not None else None


async def drain(service: ModelService, grace_seconds: float) -> None:
    """Wait until the engine has no running or waiting request, or the grace has passed."""
    if service.active:
        logger.info("waiting up to %gs for %d generations", grace_seconds, service.active)
    deadline = time.monotonic() + grace_seconds
    while service.active and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def serving_app(**overrides: object) -> FastAPI:
    """For entry points: settings from the environment (`overrides` on top) and the model
    loaded now, or the process ends with a one-line error (SystemExit prints it)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    try:
        service = load_service(settings)
    except (ValueError, OSError) as error:  # bad checkpoint, device, or unreadable file
        raise SystemExit(f"error: cannot load the model: {error}") from None
    if settings.access_log:
        configure_access_logger()
    return create_app(settings, service)


def one_line(error: ValidationError) -> str:
    """'port: Input should be less than or equal to 65535; ...' from a settings error."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
        for item in error.errors()
    )


def __getattr__(name: str) -> FastAPI:
    """`app.main.app`, built on access, for `uvicorn app.main:app`."""
    if name == "app":
        return serving_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
