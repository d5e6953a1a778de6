"""HTTP routes of the native API: translate requests into ModelService calls and results
into responses (a job's output as JSON and as events: app/http/native_responses.py).
"""

# No `from __future__ import annotations` here: FastAPI reads these annotations at runtime,
# and the dependency made inside _running refers to a local name.
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any, NamedTuple

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response, StreamingResponse

from app.engine.jobs import Job, JobFailed, ScoreJob
from app.engine.registry import ModelUnavailable
from app.engine.served_model import ServedModel, UnknownModel
from app.engine.service import ModelService
from app.gate import identity
from app.gate.liveness import LIVENESS_PATH
from app.http import sse
from app.http.auth import PROTECTED, UNAUTHORIZED
from app.http.errors import RETRY_AFTER_SECONDS
from app.http.json_body import JSONRoute
from app.http.native_responses import end_of, events, logprobs_model
from app.http.requests import continuing, decode_state, generation_params, score_ids
from app.http.schemas import (
    GenerateRequest,
    GenerateResponse,
    Health,
    Liveness,
    ModelInfo,
    ReloadReport,
    ScoreRequest,
    ScoreResponse,
    describe_model,
)
from app.http.score_body import ScoreAnswer, score_body
from model.decoding.params import GenerationParams, ParamError
from model.state import RecurrentState

logger = logging.getLogger("uvicorn.error")

router = APIRouter(route_class=JSONRoute)  # a body json cannot read: a 422

NOT_LOADED = {503: {"description": "The model is not loaded, or the service is stopping"}}
GUARDED = {**NOT_LOADED, **UNAUTHORIZED, 404: {"description": "No model of that name"}}


async def get_service(request: Request) -> ModelService:
    service: ModelService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status_code=503, detail="the model is not loaded")
    if getattr(request.app.state, "draining", False):
        # Shutting down: running streams finish, new work goes to another replica.
        raise HTTPException(
            status_code=503,
            detail="the service is shutting down; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return service


Service = Annotated[ModelService, Depends(get_service)]


async def served_model(service: ModelService, name: str | None) -> ServedModel:
    """The named model (the default for None), loaded in a worker thread if need be:
    404 for a name the service does not know, 503 for a file that cannot be loaded."""
    try:
        if service.registry.is_ready(name):
            return service.model(name)
        return await anyio.to_thread.run_sync(service.model, name)
    except UnknownModel as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    except ModelUnavailable as error:
        raise HTTPException(status_code=503, detail=str(error)) from None


def as_422(error: ParamError, source: str, value: Any) -> RequestValidationError:
    """A ParamError as FastAPI's own 422, loc = (source, field)."""
    detail: dict[str, Any] = {
        "type": error.kind,
        "loc": (source, error.field),
        "msg": error.message,
        "input": value,
    }
    if error.ctx:
        detail["ctx"] = error.ctx
    return RequestValidationError([detail])


async def to_params(
    service: ModelService,
    served: ServedModel,
    body: GenerateRequest,
    source: str,
    client: str | None = None,
) -> tuple[GenerationParams, RecurrentState | None]:
    """The body as GenerationParams, and the state it continues (None: none); a ParamError
    becomes a 422 like FastAPI's own, with loc = (source, field). A regex not yet cached
    compiles in a worker process while the request holds one of its client's places
    (app/engine/regex_compiler.py)."""
    try:
        state = decode_state(served, body.state)
        regex = None
        if body.regex is not None:
            regex = await served.regexes.automaton(body.regex, client)
        params = generation_params(served, service.limits, body, regex)
        return continuing(served, params, state, body.prime, body.skip_unknown), state
    except ParamError as error:
        # A token is kilobytes of base64 that say nothing to its sender: not echoed.
        value = None if error.field == "state" else getattr(body, error.field, None)
        raise as_422(error, source, value) from None


class Submitted(NamedTuple):
    served: ServedModel
    job: Job
    body: GenerateRequest


def client_of(request: Request) -> str | None:
    """Who sends the request, as app/gate/identity.py resolved it (behind a trusted proxy,
    the client its X-Forwarded-For names): the engine counts its quota, fair share and
    prefill credit under this."""
    return identity.client_of(request.scope)


async def submit(
    service: ModelService, body: GenerateRequest, source: str, request: Request
) -> Submitted:
    served = await served_model(service, body.model)
    client = client_of(request)
    params, state = await to_params(service, served, body, source, client)
    job = service.submit(served, params, client, state, body.return_state)
    return Submitted(served, job, body)


async def body_job(service: Service, body: GenerateRequest, request: Request) -> Submitted:
    return await submit(service, body, "body", request)


async def query_job(
    service: Service, query: Annotated[GenerateRequest, Query()], request: Request
) -> Submitted:
    return await submit(service, query, "query", request)


def _running(job_dependency: Callable[..., Any]) -> Callable[..., AsyncIterator[Submitted]]:
    """A dependency giving the submitted job, cancelled when the response ends."""

    async def dependency(
        submitted: Annotated[Submitted, Depends(job_dependency)],
    ) -> AsyncIterator[Submitted]:
        # FastAPI runs this teardown once the response is over for any reason: finished, or
        # the client went away (Starlette sees http.disconnect and cancels the stream). So
        # the engine frees the row even if the event generator is never resumed.
        try:
            yield submitted
        finally:
            submitted.job.cancel()

    return dependency


BodyJob = Annotated[Submitted, Depends(_running(body_job))]
QueryJob = Annotated[Submitted, Depends(_running(query_job))]


@router.get("/health", responses=NOT_LOADED, tags=["service"])
async def health(service: Service) -> Health:
    """200 once the default model is loaded and the decoding engine is making progress;
    model files that failed to load are listed in `problems`."""
    problem = service.engine_problem()
    if problem is not None:
        raise HTTPException(status_code=503, detail=problem)
    return Health(problems=service.registry.problems())


@router.get(
    LIVENESS_PATH,
    responses={503: {"description": "The decoding engine is dead or stalled"}},
    tags=["service"],
)
async def liveness(request: Request) -> Liveness:
    """Liveness (Kubernetes' livenessProbe): 200 while the process is not stuck, i.e. its
    event loop answers and its decoding engine, once loaded, runs and makes progress.
    Busy is not stuck: it answers past MAX_CONNECTIONS (app/gate/liveness.py), at
    capacity and while draining; GET /health is the readiness check."""
    service: ModelService | None = request.app.state.service
    problem = service.engine_problem() if service is not None else None
    if problem is not None:
        raise HTTPException(status_code=503, detail=problem)
    return Liveness()


@router.post("/admin/reload", responses=GUARDED, dependencies=PROTECTED, tags=["service"])
async def reload_models(service: Service) -> ReloadReport:
    """Look for new, replaced and removed model files now (as the poll does); replaced
    models that are loaded load again, and running streams finish on the old weights."""
    reloaded = await anyio.to_thread.run_sync(service.registry.scan)
    registry = service.registry
    return ReloadReport(models=registry.names, reloaded=reloaded, problems=registry.problems())


@router.get("/model", responses=GUARDED, dependencies=PROTECTED, tags=["service"])
async def model_info(service: Service) -> ModelInfo:
    """The default model: architecture, vocabulary, training results, request limits."""
    return describe_model(await served_model(service, None), service.limits)


@router.get("/model/{name}", responses=GUARDED, dependencies=PROTECTED, tags=["service"])
async def named_model_info(service: Service, name: str) -> ModelInfo:
    """One served model, by name."""
    return describe_model(await served_model(service, name), service.limits)


@router.post("/generate", responses=GUARDED, dependencies=PROTECTED, tags=["generate"])
async def generate(service: Service, submitted: BodyJob) -> GenerateResponse:
    """Generate up to `length` characters continuing `prime`, all at once."""
    served, job, body = submitted
    try:
        await job.finished()  # woken once, not at every step
    except JobFailed as error:
        raise HTTPException(status_code=500, detail=str(error)) from None
    joined = job.take().text
    end = end_of(job, len(joined), served.state_codec)
    # After a state the prime's first character is the state's (read already).
    read = job.params.prime[1:] if job.state is not None else job.params.prime
    return GenerateResponse(
        text=joined,
        prime=served.vocab.decode(read) if body.prime else "",
        logprobs=None
        if job.params.logprobs is None
        else logprobs_model(job, job.output.logprobs.slice(0, len(joined), job.params.logprobs)),
        **end.model_dump(),
    )


def sse_stream(service: ModelService, submitted: Submitted) -> StreamingResponse:
    """The job's output as server-sent events, paced for its client (chunk_interval)."""
    job = submitted.job
    interval = partial(service.engine.clients.chunk_interval, job.client)
    return sse.response(events(job, interval, codec=submitted.served.state_codec))


@router.post(
    "/generate/stream",
    response_class=StreamingResponse,
    responses={200: sse.DOCS, **GUARDED},
    dependencies=PROTECTED,
    tags=["generate"],
)
async def stream_post(service: Service, submitted: BodyJob) -> StreamingResponse:
    """Stream the text as server-sent events (`chars`…, then `done` with the stats)."""
    return sse_stream(service, submitted)


@router.get(
    "/generate/stream",
    response_class=StreamingResponse,
    responses={200: sse.DOCS, **GUARDED},
    dependencies=PROTECTED,
    tags=["generate"],
)
async def stream_get(service: Service, submitted: QueryJob) -> StreamingResponse:
    """As POST, with the fields as query parameters, for a browser's EventSource."""
    return sse_stream(service, submitted)


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=GUARDED,
    dependencies=PROTECTED,
    tags=["generate"],
)
async def score(service: Service, body: ScoreRequest, request: Request) -> Response:
    """How surprising each character of `text` is to the model (its log-probability given
    all before it), and the totals; read in slices between other requests' steps."""
    served = await served_model(service, body.model)
    try:
        state = decode_state(served, body.state)
        ids, oov = score_ids(served, service.limits, body, state)
    except ParamError as error:
        raise as_422(error, "body", None) from None
    job = service.score(served, ids, body.top_n, client_of(request), state)
    del ids  # while it waits, the job holds them (4 bytes a character, not a list's 8+)
    try:
        pieces = await _score_pieces(served, job, oov, body.return_state)
    except BaseException as error:  # failed, or the client left (hang_up.py cancels this)
        job.answered()
        if isinstance(error, JobFailed):
            raise HTTPException(status_code=500, detail=str(error)) from None
        raise
    return ScoreAnswer(pieces, job)  # gives the client's place back once written


async def _score_pieces(
    served: ServedModel, job: ScoreJob, oov: int, return_state: bool
) -> AsyncIterator[bytes]:
    """ScoreResponse's fields for a finished `job`, written in pieces as the client reads
    them (score_body.py)."""
    scorer = await job.result()
    continued = job.state is not None
    text = job.ids[1:] if continued else job.ids  # after a state: what follows it
    seconds = (job.finished_at or time.perf_counter()) - job.submitted_at
    head = {
        "model": served.name,
        "text": served.vocab.decode(text.tolist()),
        "chars": len(job.ids) - 1,
        "oov_chars": oov,
        "nats": scorer.nats,
        "bits": scorer.nats / math.log(2),
        "nats_per_char": scorer.nats_per_char,
        "bits_per_char": scorer.bits_per_char,
        "perplexity": math.exp(scorer.nats_per_char),
    }
    tail = {
        "seconds": seconds,
        "state": served.state_codec.encode(scorer.final_state()) if return_state else None,
    }
    return score_body(head, scorer, served.vocab.chars, continued, tail)
