"""Deep or malformed JSON, in any field, in a body or a query string: a 422 naming the field
(OpenAI's 400 naming it under /v1), never a 500 (app/http/json_body.py, app/http/errors.py,
app/http/schemas.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.http.json_body import deep_field
from tests.app.support import ClientWith

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
# A route, one field of its body, and the rest of a valid body.
FIELDS = [
    ("/generate", "logit_bias", {}),
    ("/generate", "stop", {}),
    ("/generate/stream", "prime", {}),
    ("/score", "text", {}),
    ("/v1/completions", "logit_bias", {"model": "tiny"}),
    ("/v1/completions", "prompt", {"model": "tiny"}),
    ("/v1/chat/completions", "messages", {"model": "tiny"}),
]


@pytest.fixture
async def roomy(client_with: ClientWith) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with room for a 100,000-deep body (MAX_BODY_BYTES 1 MB)."""
    async with client_with(max_body_bytes=2**20) as http:
        yield http


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def body_with(field: str, value: str, rest: dict[str, Any]) -> str:
    """A JSON body whose `field` is the raw JSON text `value`."""
    return json.dumps(rest)[:-1] + (", " if rest else "") + f'"{field}": {value}}}'


def assert_names(response: httpx.Response, path: str, field: str | None) -> None:
    """A 422 whose first error's loc is ("body", field), or OpenAI's 400 with `param`."""
    if path.startswith("/v1/"):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field
    else:
        assert response.status_code == 422, response.text
        loc = response.json()["detail"][0]["loc"]
        assert loc[:2] == (["body", field] if field else ["body"])


@pytest.mark.parametrize("depth", [3_000, 100_000])
@pytest.mark.parametrize(("path", "field", "rest"), FIELDS)
async def test_a_field_nested_past_the_parser_is_named(
    roomy: httpx.AsyncClient, path: str, field: str, rest: dict, depth: int
) -> None:
    body = body_with(field, nested(depth), rest)
    response = await roomy.post(path, content=body, headers=JSON)
    assert_names(response, path, field)
    assert "nested too deeply" in response.text


@pytest.mark.parametrize(("path", "field", "rest"), FIELDS)
async def test_a_field_nested_as_deep_as_the_parser_reads_is_named(
    client: httpx.AsyncClient, path: str, field: str, rest: dict
) -> None:
    """900 levels parse, and the 422 that echoes the input must not recurse through them."""
    response = await client.post(path, content=body_with(field, nested(900), rest), headers=JSON)
    assert response.status_code in (400, 422), response.text
    if not path.startswith("/v1/"):
        error = response.json()["detail"][0]
        assert error["loc"][:2] == ["body", field]
        echoed = json.dumps(error["input"])
        assert echoed.count("[") <= 8 and '"..."' in echoed  # cut short


@pytest.mark.parametrize("path", ["/generate", "/score", "/v1/completions"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_a_body_nested_past_the_parser_is_refused(
    roomy: httpx.AsyncClient, path: str, depth: int
) -> None:
    for body in (nested(depth), "{" + '"a":{' * depth + "}" * depth + "}"):
        response = await roomy.post(path, content=body, headers=JSON)
        assert_names(response, path, None if body.startswith("[") else "a")


@pytest.mark.parametrize("depth", [10, 900, 3_000])
async def test_a_deep_query_value_is_a_422_naming_it(client: httpx.AsyncClient, depth: int) -> None:
    for value in (nested(depth), '{"a":' * depth + "1" + "}" * depth):
        response = await client.get("/generate/stream", params={"logit_bias": value})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["query", "logit_bias"]


@pytest.mark.parametrize("path", ["/generate", "/score", "/v1/completions"])
@pytest.mark.parametrize(
    "body",
    [b'{"prime": "ab', b"\xff\xfe{}", b'{"text": "\xc3\x28"}', b"{", b"[1,]", b"nul"],
    ids=["unterminated", "latin-1", "bad-utf8", "open", "trailing-comma", "bare-word"],
)
async def test_malformed_json_is_a_422_on_the_body(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body, headers=JSON)
    if path.startswith("/v1/"):
        assert response.status_code == 400 and response.json()["error"]["type"], response.text
    else:
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert error["type"] == "json_invalid" and error["loc"][0] == "body"


async def test_a_valid_body_still_works(client: httpx.AsyncClient) -> None:
    response = await client.post("/generate", json={"length": 5, "logit_bias": {"a": 1}})
    assert response.status_code == 200 and response.json()["stats"]["chars"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"stop": ' + nested(200).encode() + b"}", ("stop",)),
        (b'{"a": 1, "b": [1, {"c": ' + nested(200).encode() + b"}]}", ("b",)),
        (b'{"x,y": "[[[[", "z": ' + nested(200).encode() + b"}", ("z",)),  # brackets in a key
        (b'{"q\\"": ' + nested(200).encode() + b"}", ('q"',)),  # an escaped quote
        (nested(200).encode(), ()),
        (b'{"shallow": [[1]]}', ()),
    ],
)
def test_deep_field_finds_the_field(body: bytes, field: tuple) -> None:
    assert deep_field(body) == field
