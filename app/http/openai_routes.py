"""OpenAI-compatible routes, so OpenAI's clients work unchanged with base_url=.../v1:

    POST /v1/completions        text completions, whole or streamed (`data: {...}`,
                                `data: [DONE]`, and `: ping` after 15 s of silence)
    POST /v1/chat/completions   chat: the messages rendered by the model's chat template,
                                then completed as above (app/http/chat.py)
    GET  /v1/models             the served models; GET /v1/models/{id} for one

Their errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with
OpenAI's statuses (400 for a bad parameter, not FastAPI's 422), so the clients raise
their usual BadRequestError, AuthenticationError, NotFoundError, ...
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.engine.engine import EngineBusy
from app.engine.jobs import JobFailed
from app.engine.served_model import ServedModel
from app.engine.service import ModelService
from app.gate.clients import ClientBusy
from app.http import routes, sse
from app.http.auth import PROTECTED
from app.http.chat import ChatRun
from app.http.chat_schemas import ChatCompletion, ChatCompletionRequest
from app.http.completions import CompletionRun
from app.http.errors import RETRY_AFTER_SECONDS
from app.http.json_body import JSONRoute
from app.http.openai_schemas import (
    Completion,
    CompletionRequest,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from app.http.routes import Service
from model.decoding.automaton import Automaton
from model.decoding.params import ParamError

logger = logging.getLogger("uvicorn.error")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "A parameter is invalid (`param` names it)"),
        (401, "API_KEY is set and the request lacks it"),
        (404, "No such model"),
        (503, "At capacity, not loaded, or shutting down (see Retry-After)"),
    ]
}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    # ensure_ascii: an echoed prompt may hold a lone surrogate, which UTF-8 cannot carry.
    text = json.dumps(body.model_dump(), ensure_ascii=True)
    return Response(text, status, headers=headers, media_type="application/json")


class OpenAIError(Exception):
    """An error these routes answer as is (e.g. 404 model_not_found)."""

    def __init__(self, status: int, message: str, param: str | None, code: str):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class OpenAIRoute(JSONRoute):
    """Renders this router's errors, dependencies' included, in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as error:
                return error_response(
                    error.status, error.message, param=error.param, code=error.code
                )
            except RequestValidationError as error:
                return invalid_parameters(error)
            except ParamError as error:
                return error_response(400, error.message, param=error.field, code=error.kind)
            except ClientBusy as error:
                retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
                return error_response(
                    429, f"too many requests: {error}", code="rate_limit_exceeded", headers=retry
                )
            except EngineBusy as error:
                retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
                message = f"the server is at capacity ({error}); retry shortly"
                return error_response(503, message, code="overloaded", headers=retry)
            except HTTPException as error:
                code = "invalid_api_key" if error.status_code == 401 else None
                return error_response(
                    error.status_code, str(error.detail), code=code, headers=error.headers
                )

        return openai_handler


def invalid_parameters(error: RequestValidationError) -> Response:
    """400 naming the first bad parameter (`max_tokens`, `stop.1`, ...) and all messages."""
    params, messages = [], []
    for item in error.errors():
        loc = [str(part) for part in item["loc"][1:]] if item["loc"][:1] == ("body",) else []
        params.append(".".join(loc) or None)
        text = item["msg"].removeprefix("Value error, ")  # a validator's own words
        messages.append(f"{'.'.join(loc) or 'body'}: {text}")
    return error_response(400, "; ".join(messages), param=params[0], code="invalid_value")


router = APIRouter(
    prefix="/v1",
    route_class=OpenAIRoute,
    dependencies=PROTECTED,
    responses=ERRORS,
    tags=["openai"],
)


def model_card(name: str, path: Path) -> ModelCard:
    created = int(path.stat().st_mtime) if path.is_file() else 0
    return ModelCard(id=name, created=created)


async def served_model(service: ModelService, name: str) -> ServedModel:
    try:
        return await routes.served_model(service, name)
    except HTTPException as error:
        if error.status_code == 404:
            message = f"The model `{name}` does not exist; {error.detail}"
            raise OpenAIError(404, message, "model", "model_not_found") from None
        raise


async def compiled_regex(
    served: ServedModel, pattern: str | None, client: str | None
) -> Automaton | None:
    """The request's regex as an automaton (None without one): cached, or compiled in a
    worker process while the request holds one of `client`'s places (429 past its quota;
    app/engine/regex_compiler.py), as the native routes do."""
    return None if pattern is None else await served.regexes.automaton(pattern, client)


async def completion_run(
    service: Service, body: CompletionRequest, request: Request
) -> AsyncIterator[CompletionRun]:
    """The request's jobs, queued; cancelled when the response ends, however it ends."""
    served = await served_model(service, body.model)
    client = routes.client_of(request)
    regex = await compiled_regex(served, body.regex, client)
    run = CompletionRun.start(service, served, body, client, regex)
    try:
        yield run
    finally:
        run.close()


async def chat_run(
    service: Service, body: ChatCompletionRequest, request: Request
) -> AsyncIterator[ChatRun]:
    """The chat's jobs, queued; cancelled when the response ends. Its regex compiles as a
    completion's does; rendering runs the model's template (bounded, but the checkpoint's
    code): not on the event loop."""
    served = await served_model(service, body.model)
    client = routes.client_of(request)
    regex = await compiled_regex(served, body.regex, client)
    run = await anyio.to_thread.run_sync(ChatRun.start, service, served, body, client, regex)
    try:
        yield run
    finally:
        run.close()


async def stream_events(chunks: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Chunks as `data:` events, a `: ping` for each None (a silence), then [DONE]."""
    try:
        async for chunk in chunks:
            yield sse.KEEPALIVE if chunk is None else f"data: {chunk.model_dump_json()}\n\n"
    except JobFailed as error:  # after the 200 went out: OpenAI's clients raise on this
        body = ErrorResponse(error=ErrorBody(message=str(error), type="server_error"))
        yield f"data: {body.model_dump_json()}\n\n"
        return
    yield "data: [DONE]\n\n"


@router.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": {sse.MEDIA_TYPE: {}}, "description": "stream: true"}},
)
async def completions(run: Annotated[CompletionRun, Depends(completion_run)]) -> Any:
    """Complete the prompt(s): a Completion, or with `stream: true` server-sent chunks."""
    if run.request.stream:
        return sse.response(stream_events(run.chunks(sse.KEEPALIVE_SECONDS)))
    try:
        return await run.collect()
    except JobFailed as error:  # the engine failed a job
        return error_response(500, str(error), code="generation_failed")


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {sse.MEDIA_TYPE: {}}, "description": "stream: true"}},
)
async def chat_completions(run: Annotated[ChatRun, Depends(chat_run)]) -> Any:
    """Reply to the conversation: a ChatCompletion, or with `stream: true` server-sent
    chunks. The messages are written out by the model's chat template (GET /model)."""
    if run.request.stream:
        return sse.response(stream_events(run.chunks(sse.KEEPALIVE_SECONDS)))
    try:
        return await run.collect()
    except JobFailed as error:
        return error_response(500, str(error), code="generation_failed")


@router.get("/models")
async def list_models(service: Service) -> ModelList:
    files = service.registry.files
    return ModelList(data=[model_card(name, files[name].path) for name in service.registry.names])


@router.get("/models/{model}")
async def retrieve_model(service: Service, model: str) -> ModelCard:
    entry = service.registry.files.get(model)
    if entry is None:
        message = f"The model `{model}` does not exist"
        raise OpenAIError(404, message, "model", "model_not_found")
    return model_card(model, entry.path)
