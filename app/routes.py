"""HTTP routes: translate requests into TextGenerator calls and results into responses.

The streams are server-sent events (app/sse.py), with `Cache-Control: no-cache`,
`X-Accel-Buffering: no`, and a `: ping` comment after 15 s without an event:

    event: chars            (any number of these; data is a JSON string of 1+ chars)
    data: "To be, or no"

    event: done             (last; data is GenerationStats as JSON)
    data: {"chars": 200, ...}

or, when generation fails after the stream began, a final `event: error`.
"""

# No `from __future__ import annotations` here: FastAPI reads these annotations at runtime,
# and the dependency made inside _running refers to a local name.
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.responses import StreamingResponse

from app import sse
from app.auth import PROTECTED, UNAUTHORIZED
from app.errors import RETRY_AFTER_SECONDS
from app.generation import Generation, InvalidRequest, Job, TextGenerator
from app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.schemas import GenerateRequest, GenerateResponse, Health, ModelInfo, StreamError

logger = logging.getLogger("uvicorn.error")

router = APIRouter()

NOT_LOADED = {503: {"description": "The model is not loaded, or the service is stopping"}}
GUARDED = {**NOT_LOADED, **UNAUTHORIZED}


async def get_generator(request: Request) -> TextGenerator:
    generator: TextGenerator | None = getattr(request.app.state, "generator", None)
    if generator is None:
        raise HTTPException(status_code=503, detail="the model is not loaded")
    if getattr(request.app.state, "draining", False):
        # Shutting down: running streams finish, new work goes to another replica.
        raise HTTPException(
            status_code=503,
            detail="the service is shutting down; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return generator


Generator = Annotated[TextGenerator, Depends(get_generator)]


def _validate(generator: TextGenerator, request: GenerateRequest, source: str) -> Job:
    """The generator's checks, reported like FastAPI's own 422s: loc = (source, field)."""
    try:
        return generator.validate(request)
    except InvalidRequest as error:
        detail: dict[str, Any] = {
            "type": error.kind,
            "loc": (source, error.field),
            "msg": error.message,
            "input": error.value,
        }
        if error.ctx:
            detail["ctx"] = error.ctx
        raise RequestValidationError([detail]) from None


async def body_job(generator: Generator, body: GenerateRequest) -> Job:
    return _validate(generator, body, "body")


async def query_job(generator: Generator, query: Annotated[GenerateRequest, Query()]) -> Job:
    return _validate(generator, query, "query")


BodyJob = Annotated[Job, Depends(body_job)]


def _running(job_dependency: Callable[..., Job]) -> Callable[..., AsyncIterator[Generation]]:
    """A dependency giving the job's Generation and closing it when the response ends."""

    async def dependency(
        generator: Generator, job: Annotated[Job, Depends(job_dependency)]
    ) -> AsyncIterator[Generation]:
        # FastAPI runs this teardown once the response is over for any reason: finished, or
        # the client went away (Starlette sees http.disconnect and cancels the stream). So
        # the worker thread stops even if the event generator is never resumed.
        generation = generator.stream(job, keepalive=sse.KEEPALIVE_SECONDS)
        try:
            yield generation
        finally:
            generation.close()

    return dependency


BodyGeneration = Annotated[Generation, Depends(_running(body_job))]
QueryGeneration = Annotated[Generation, Depends(_running(query_job))]


async def events(generation: Generation) -> AsyncIterator[str]:
    """chars events as the text is produced, then done with the stats (or error)."""
    try:
        async for chunk in generation:
            if chunk:
                yield sse.event("chars", json.dumps(chunk, ensure_ascii=False))
            else:  # nothing new for a while (queued for a row): keep the connection open
                yield sse.KEEPALIVE
    except Exception as error:
        logger.exception("generation failed mid-stream")
        message = str(error) or type(error).__name__
        yield sse.event("error", StreamError(message=message).model_dump_json())
        return
    assert generation.stats is not None  # set once the engine has finished the job
    yield sse.event("done", generation.stats.model_dump_json())


@router.get("/health", responses=NOT_LOADED, tags=["service"])
async def health(_: Generator) -> Health:
    """200 once the model is loaded and requests can be served."""
    return Health()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (app/metrics.py); public, like /health: counts only."""
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.get("/model", responses=GUARDED, dependencies=PROTECTED, tags=["service"])
async def model_info(generator: Generator) -> ModelInfo:
    """The served network: architecture, vocabulary, training results, request limits."""
    return generator.describe()


@router.post("/generate", responses=GUARDED, dependencies=PROTECTED, tags=["generate"])
async def generate(generator: Generator, job: BodyJob) -> GenerateResponse:
    """Generate `length` characters continuing `prime`, all at once."""
    text, stats = await generator.generate(job)
    return GenerateResponse(text=text, prime=job.prime, stats=stats)


@router.post(
    "/generate/stream",
    response_class=StreamingResponse,
    responses={200: sse.DOCS, **GUARDED},
    dependencies=PROTECTED,
    tags=["generate"],
)
async def stream_post(generation: BodyGeneration) -> StreamingResponse:
    """Stream the text as server-sent events (`chars`…, then `done` with the stats)."""
    return sse.response(events(generation))


@router.get(
    "/generate/stream",
    response_class=StreamingResponse,
    responses={200: sse.DOCS, **GUARDED},
    dependencies=PROTECTED,
    tags=["generate"],
)
async def stream_get(generation: QueryGeneration) -> StreamingResponse:
    """As POST, with the fields as query parameters, for a browser's EventSource."""
    return sse.response(events(generation))
