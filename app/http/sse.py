"""Server-sent events: the wire format and the streaming response both APIs use.

A plain Starlette StreamingResponse of pre-formatted events: per event it costs one string
and one write, which matters when hundreds of streams share one event loop (FastAPI's
EventSourceResponse runs two tasks, memory streams and a timeout scope per response,
about twice the event loop's time per request here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import StreamingResponse

MEDIA_TYPE = "text/event-stream"
# no-cache: never store a stream; X-Accel-Buffering: nginx passes events on at once.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_SECONDS = 15.0  # a comment after this long without an event keeps proxies open
KEEPALIVE = ": ping\n\n"
# OpenAPI: what the streaming routes answer with.
DOCS = {"content": {MEDIA_TYPE: {}}, "description": "A stream of server-sent events"}


def event(name: str, data: str) -> str:
    """One event; `data` must not contain a newline (JSON-encode it first)."""
    return f"event: {name}\ndata: {data}\n\n"


def json_event(name: str, value: Any) -> str:
    """One event whose data is `value` as JSON. orjson, not the json module: a stream with
    logprobs sends six floats a character, and json's float formatting held the event
    loop (and the GIL the decoding thread needs) longer than generating them took; numpy
    arrays in `value` are written as lists, without a Python object per number."""
    return event(name, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode())


def response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)
