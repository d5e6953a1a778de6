"""app/http/routes.py through HTTP (httpx's ASGI transport): responses, 422s, event streams."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from app.engine.lane import FAILED_MESSAGE
from app.engine.service import ModelService
from model.vocab import Vocabulary
from tests.app.support import count_chunks, record_pacing

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "problems": {}}


async def test_model(client: httpx.AsyncClient, vocab: Vocabulary) -> None:
    info = (await client.get("/model")).json()
    assert info["name"] == "tiny" and info["checkpoint"] == "tiny.safetensors"
    assert info["newlines"] == "lf"
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
    assert info["limits"] == {
        "max_length": 300,
        "max_prime_length": 50,
        "default_length": 40,
        "max_score_chars": 250_000,
        "max_score_cells": 1_250_000,
    }
    assert (await client.get("/model/tiny")).json() == info
    missing = await client.get("/model/gpt-4")
    assert missing.status_code == 404 and "tiny" in missing.json()["detail"]


async def test_generate(client: httpx.AsyncClient, vocab: Vocabulary) -> None:
    body = {"prime": "To be", "length": 50, "temperature": 0.8, "top_k": 5, "seed": 3}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200
    result = response.json()
    assert len(result["text"]) == 50 and set(result["text"]) <= set(vocab.chars)
    assert result["prime"] == "To be" and result["finish_reason"] == "length"
    assert result["logprobs"] is None
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
        ({"length": -5}, "length"),
        ({"length": 301}, "length"),  # above MAX_LENGTH
        ({"length": 10**40}, "length"),
        ({"length": "many"}, "length"),
        ({"length": 2.5}, "length"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 9223372036854775808}, "top_k"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 1e300}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repeat_last_n": 10**9}, "repeat_last_n"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logit_bias": {"a": 1000}}, "logit_bias"),
        ({"logit_bias": {"€": 1}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["x" * 33]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"logprobs": 6}, "logprobs"),
        ({"prompt_logprobs": True}, "prompt_logprobs"),
        ({"regex": "(unclosed"}, "regex"),
        ({"regex": "€+"}, "regex"),
        ({"regex": "a" * 300}, "regex"),
        ({"model": 5}, "model"),
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
        assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]]


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
    done = events[-1][1]
    assert done["finish_reason"] == "length"
    stats = done["stats"]
    assert (stats["chars"], stats["seed"], stats["prime_chars"]) == (120, 11, 5)


async def test_a_whole_generation_wakes_its_handler_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = count_chunks(monkeypatch)
    body = {"length": 300, "seed": 3}
    whole = (await client.post("/generate", json=body)).json()["text"]
    assert len(whole) == 300 and read == []  # not a chunk per engine step
    streamed = await client.post("/generate/stream", json={**body, "logprobs": None})
    assert streamed.status_code == 200 and sum(read) == 300  # the stream reads chunks


async def test_both_streams_are_paced_for_their_client(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = record_pacing(service.engine, monkeypatch)
    assert (await client.post("/generate/stream", json={"length": 20})).status_code == 200
    assert (await client.get("/generate/stream", params={"length": 20})).status_code == 200
    assert len(asked) >= 2 and set(asked) == {"127.0.0.1"}


async def test_stream_get_takes_query_parameters(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"prime": "a\nb", "length": 60, "top_k": 3, "top_p": 0.9, "seed": 5}
    expected = (await client.post("/generate", json=body)).json()["text"]
    response = await client.get("/generate/stream", params=body)
    assert response.status_code == 200
    events = sse(response.text)
    assert "".join(data for name, data in events if name == "chars") == expected
    assert events[-1][0] == "done" and events[-1][1]["stats"]["seed"] == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"length": -1}, "length"),
        ({"length": 301}, "length"),
        ({"top_k": 9223372036854775808}, "top_k"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"logit_bias": "{not json"}, "logit_bias"),
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


async def test_newlines_survive_the_stream(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"length": 20, "regex": "a\nb\n\nc"}  # only one text matches: the output
    response = await client.post("/generate/stream", json=body)
    assert "\\n" in response.text  # newlines JSON-escaped: one data line per event
    events = sse(response.text)
    assert "".join(data for name, data in events if name == "chars") == "a\nb\n\nc"
    assert events[-1][1]["finish_reason"] == "regex"
    assert events[-1][1]["regex_complete"] is True


async def test_a_failing_generation_ends_with_an_error_event(
    client: httpx.AsyncClient, sse: Parse, failing_step: Callable[[int], None]
) -> None:
    failing_step(3)  # 200 characters take 7 calls of 32 steps
    response = await client.post("/generate/stream", json={"length": 200})
    events = sse(response.text)
    assert events[-1] == ("error", {"message": FAILED_MESSAGE})  # details stay in the log
    assert {name for name, _ in events[:-1]} <= {"chars"}
    assert (await client.post("/generate", json={"length": 200})).status_code == 500


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "char-rnn text generation"
    assert {"/health", "/model", "/generate", "/generate/stream"} <= set(schema["paths"])
    assert (await client.get("/docs")).status_code == 200


async def test_too_many_requests_from_one_client_is_a_429(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch, sse: Parse
) -> None:
    engine = service.engine
    monkeypatch.setattr(engine.clients, "limit", 2)
    decoder = service.model().lane.decoder
    step = decoder.step

    def slow_step(*args: Any) -> Any:
        time.sleep(0.002)  # the two streams outlast the requests below
        return step(*args)

    monkeypatch.setattr(decoder, "step", slow_step)
    body = {"length": 300, "seed": 1}
    async with anyio.create_task_group() as group:
        results: list[httpx.Response] = []

        async def stream() -> None:
            results.append(await client.post("/generate/stream", json=body))

        for _ in range(2):
            group.start_soon(stream)
        while engine.active + engine.queued < 2:
            await anyio.sleep(0.001)
        refused = await client.post("/generate", json={"length": 5})
        openai = await client.post("/v1/completions", json={"model": "tiny", "max_tokens": 5})
        score = await client.post("/score", json={"text": "ab"})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "2 requests" in refused.json()["detail"]
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert score.status_code == 429
    assert [len(r.text) > 0 and r.status_code for r in results] == [200, 200]
    assert (await client.post("/generate", json={"length": 5})).status_code == 200
