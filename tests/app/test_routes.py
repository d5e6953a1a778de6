"""app/routes.py through HTTP (httpx's ASGI transport): responses, 422s, event streams."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import Script

from model.vocab import Vocabulary

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_model(client: httpx.AsyncClient, vocab: Vocabulary) -> None:
    info = (await client.get("/model")).json()
    assert info["name"] == "tiny" and info["checkpoint"].endswith("tiny.safetensors")
    assert info["config"] == {
        "cell": "lstm",
        "hidden_size": 16,
        "num_layers": 2,
        "dropout": 0.5,
        "vocab_size": len(vocab),
    }
    assert info["vocabulary"] == list(vocab.chars)
    assert info["training"]["val_loss"] == 1.25
    assert info["training"]["val_bits_per_char"] == 1.8
    assert info["training"]["corpus"] == "tiny"
    assert info["device"] == "cpu" and info["parameters"] > 0
    assert info["limits"] == {"max_length": 300, "max_prime_length": 50, "default_length": 40}


async def test_generate(client: httpx.AsyncClient, vocab: Vocabulary) -> None:
    body = {"prime": "To be", "length": 50, "temperature": 0.8, "top_k": 5, "seed": 3}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200
    result = response.json()
    assert len(result["text"]) == 50 and set(result["text"]) <= set(vocab.chars)
    assert result["prime"] == "To be"
    stats = result["stats"]
    assert (stats["chars"], stats["seed"], stats["prime_chars"], stats["model"]) == (
        50,
        3,
        5,
        "tiny",
    )
    assert stats["seconds"] > 0 and stats["chars_per_second"] > 0
    again = (await client.post("/generate", json=body)).json()
    other = (await client.post("/generate", json={**body, "seed": 4})).json()
    assert again["text"] == result["text"] != other["text"]


async def test_generate_defaults_report_a_seed_that_repeats(client: httpx.AsyncClient) -> None:
    first = (await client.post("/generate", json={})).json()
    assert len(first["text"]) == 40  # DEFAULT_LENGTH
    seed = first["stats"]["seed"]
    repeat = (await client.post("/generate", json={"seed": seed})).json()
    assert repeat["text"] == first["text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"length": 0}, "length"),
        ({"length": -5}, "length"),
        ({"length": 301}, "length"),  # above MAX_LENGTH
        ({"length": 10**40}, "length"),
        ({"length": "many"}, "length"),
        ({"length": 2.5}, "length"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 1e-300}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"prime": "a" * 51}, "prime"),  # above MAX_PRIME_LENGTH
        ({"prime": 12}, "prime"),
        ({"skip_unknown": "perhaps"}, "skip_unknown"),
        ({"temprature": 0.5}, "temprature"),  # unknown fields are typos, not ignored
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict, field: str
) -> None:
    for response in (
        await client.post("/generate", json=body),
        await client.post("/generate/stream", json=body),
    ):
        assert response.status_code == 422, response.text
        assert ["body", field] in [error["loc"] for error in response.json()["detail"]]


async def test_unknown_prime_chars_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.post("/generate", json={"prime": "héllo wörld"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "prime"]
    assert error["ctx"]["missing"] == ["é", "ö"]
    assert "'é', 'ö'" in error["msg"]


async def test_skip_unknown_drops_them(client: httpx.AsyncClient) -> None:
    body = {"prime": "héllo wörld", "skip_unknown": True, "length": 5}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200
    assert response.json()["prime"] == "hllo wrld"
    assert response.json()["stats"]["prime_chars"] == 9


def reject(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"prime": "\\ud800"}',  # a lone surrogate: valid JSON, not encodable as UTF-8
        b'{"length": "\\ud800"}',
        b'{"length": 1e400}',  # infinity: no JSON for it in the 422's input echo
        b'{"top_p": -1e400}',
        b"\xff\xfe",
    ],
)
async def test_malformed_bodies_are_client_errors(
    client: httpx.AsyncClient, content: bytes
) -> None:
    headers = {"content-type": "application/json"}
    response = await client.post("/generate", content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    json.loads(response.text, parse_constant=reject)  # strict JSON: no Infinity, no NaN
    assert (await client.get("/health")).status_code == 200


async def test_stream_post(client: httpx.AsyncClient, vocab: Vocabulary, sse: Parse) -> None:
    body = {"prime": "ROMEO", "length": 120, "seed": 11}
    expected = (await client.post("/generate", json=body)).json()["text"]
    response = await client.post("/generate/stream", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"chars"}
    text = "".join(data for name, data in events if name == "chars")
    assert text == expected and len(text) == 120
    stats = events[-1][1]
    assert (stats["chars"], stats["seed"], stats["prime_chars"]) == (120, 11, 5)


async def test_stream_get_takes_query_parameters(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"prime": "a\nb", "length": 60, "top_k": 3, "top_p": 0.9, "seed": 5}
    expected = (await client.post("/generate", json=body)).json()["text"]
    response = await client.get("/generate/stream", params=body)
    assert response.status_code == 200
    events = sse(response.text)
    assert "".join(data for name, data in events if name == "chars") == expected
    assert events[-1][0] == "done" and events[-1][1]["seed"] == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"length": 0}, "length"),
        ({"length": 301}, "length"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"prime": "€"}, "prime"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_stream_get_422s_name_the_query_field(
    client: httpx.AsyncClient, params: dict, field: str
) -> None:
    response = await client.get("/generate/stream", params=params)
    assert response.status_code == 422
    assert ["query", field] in [error["loc"] for error in response.json()["detail"]]


async def test_newlines_survive_the_stream(
    client: httpx.AsyncClient, sse: Parse, scripted_decoder: Script
) -> None:
    scripted_decoder("a\nb\n\nc")
    response = await client.post("/generate/stream", json={"length": 6})
    assert "\\n" in response.text  # newlines JSON-escaped: one data line per event
    text = "".join(data for name, data in sse(response.text) if name == "chars")
    assert text == "a\nb\n\nc"


async def test_a_failing_generation_ends_with_an_error_event(
    client: httpx.AsyncClient, sse: Parse, scripted_decoder: Script
) -> None:
    scripted_decoder("x", fail=True)
    response = await client.post("/generate/stream", json={"length": 10})
    assert sse(response.text) == [
        ("chars", "x"),
        ("error", {"message": "generation failed: out of memory"}),
    ]


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "char-rnn text generation"
    assert {"/health", "/model", "/generate", "/generate/stream"} <= set(schema["paths"])
    assert (await client.get("/docs")).status_code == 200
