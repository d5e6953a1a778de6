"""Request bodies that are not JSON the parser can read: a 422 naming where, never a 500.

FastAPI parses a JSON body with the json module and answers a syntax error with its own
422 (`json_invalid`), but anything else the parser raises becomes a bare 400 ("There was
an error parsing the body"): text that is not UTF-8, and nesting deeper than the
interpreter's recursion limit (about 1,000 levels: `[[[[…` in any field), which json
refuses with a RecursionError. `JSONRoute` (the route class of both routers) reads the
body with `JSONRequest` instead, which turns the first into FastAPI's own json_invalid
and the second into a validation error naming the field that holds the deep value
(loc = ("body", field)), so it comes in the route's error shape: a 422, or OpenAI's
400 with `param` under /v1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

# What counts as deep when the field to blame is looked for, once the parser has refused
# the body: no field of the API nests more than three levels.
REPORTED_DEPTH = 100
# How much of the body that look reads: enough for any field of the API, and a bounded
# cost however long the body is (past it, the error names the body alone).
SCANNED_BYTES = 64 * 1024
# A JSON string (escapes included) or one structural character; everything else (numbers,
# literals, white space) is skipped.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


class JSONTooDeep(HTTPException):
    """Raised from JSONRequest.json(): FastAPI lets an HTTPException through its body
    parsing (anything else becomes its 400), and JSONRoute makes it a validation error."""

    def __init__(self, loc: tuple[str | int, ...]):
        super().__init__(422, "JSON nested too deeply")
        self.loc = loc

    def error(self) -> dict[str, Any]:
        return {
            "type": "json_too_deep",
            "loc": self.loc,
            "msg": "JSON nested too deeply to parse",
            "input": None,
        }


class JSONRequest(Request):
    """A Request whose json() refuses, in FastAPI's terms, what json.loads cannot read."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except UnicodeDecodeError as error:
                # FastAPI answers a JSONDecodeError with its own 422 (json_invalid).
                raise json.JSONDecodeError("not UTF-8 text", "", error.start) from None
            except RecursionError:
                raise JSONTooDeep(("body", *deep_field(body))) from None
        return self._json


class JSONRoute(APIRoute):
    """Reads each request's body with JSONRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_handler(request: Request) -> Response:
            try:
                return await handler(JSONRequest(request.scope, request.receive))
            except JSONTooDeep as error:
                raise RequestValidationError([error.error()]) from None

        return json_handler


def deep_field(body: bytes, depth: int = REPORTED_DEPTH) -> tuple[str | int, ...]:
    """The field of `body` (a JSON text) that holds its first container deeper than
    `depth`: (the top-level object's key,), or () when the body itself is not an object,
    or none is found in its first SCANNED_BYTES."""
    text = body[:SCANNED_BYTES].decode("utf-8", errors="replace")
    containers: list[str] = []  # "{" or "[" for each open one, outermost first
    path: list[str | int] = []  # the key or index inside each
    expect_key = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            if len(containers) >= depth:
                return tuple(path[:1]) if containers[0] == "{" else ()
            containers.append(token)
            path.append(0)
            expect_key = token == "{"
        elif token in "]}":
            if containers:
                containers.pop()
                path.pop()
            expect_key = False
        elif token == ",":
            if containers and containers[-1] == "[":
                path[-1] = int(path[-1]) + 1
            expect_key = bool(containers) and containers[-1] == "{"
        elif token == ":":
            expect_key = False
        elif expect_key:  # a string where an object's key goes
            path[-1] = _key(token)
    return ()


def _key(token: str) -> str:
    try:
        return str(json.loads(token))
    except ValueError:
        return token[1:-1]
