"""The 422 response: FastAPI's own body ({"detail": [{"loc", "msg", "type", ...}]}), made
safe to encode whatever the client sent.

FastAPI echoes the offending input (here cut at MAX_ECHO_DEPTH levels: a deeply nested one
would exhaust the encoders' recursion), and two kinds of input cannot go out as UTF-8 JSON:
a lone surrogate ("\\ud800" is valid JSON, but not encodable as UTF-8) and a number too
large for a float (1e400 parses as infinity, which JSON cannot express). FastAPI's default
handler fails on both with a 500; this one escapes non-ASCII and spells infinities as
strings.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from app.gate.clients import ClientBusy
from app.gate.quota import RETRY_AFTER_SECONDS

MAX_ECHO_DEPTH = 8  # levels of a refused input echoed back in a 422 (no field nests more)


async def engine_busy(request: Request, error: Exception) -> Response:
    """503 with Retry-After: the engine's rows and waiting queue are all taken; 429 when
    this client alone has its MAX_REQUESTS_PER_CLIENT in."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(error, ClientBusy):
        body = json.dumps({"detail": f"too many requests: {error}; retry when one ends"})
        return Response(body, status_code=429, media_type="application/json", headers=headers)
    body = json.dumps({"detail": f"the server is at capacity ({error}); retry shortly"})
    return Response(body, status_code=503, media_type="application/json", headers=headers)


async def validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    items = [{**item, "input": _shallow(item.get("input"))} for item in error.errors()]
    detail = _finite(jsonable_encoder(items))
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


def _shallow(value: Any, depth: int = 0) -> Any:
    """`value` with what lies deeper than MAX_ECHO_DEPTH levels replaced by "...": the
    encoders below recurse, and an input nested ~1,000 deep would exhaust the stack."""
    if isinstance(value, dict | list | tuple) and depth >= MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {key: _shallow(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_shallow(item, depth + 1) for item in value]
    return value


def _finite(value: Any) -> Any:
    """`value` with non-finite floats replaced by their names ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
