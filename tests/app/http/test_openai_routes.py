"""app/http/openai_routes.py through HTTP: OpenAI's response, chunk and error shapes."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
from pydantic import SecretStr

from app.engine.engine import EngineBusy
from app.engine.service import ModelService
from tests.app.support import ClientWith, count_chunks, record_pacing

pytestmark = pytest.mark.anyio


def data_lines(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


async def complete(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": "tiny", **fields})


async def test_models(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert (card["id"], card["object"]) == ("tiny", "model") and card["created"] > 0
    assert (await client.get("/v1/models/tiny")).json() == card
    missing = await client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_completion_shape_and_usage(client: httpx.AsyncClient) -> None:
    response = await complete(client, prompt="To be", max_tokens=30, seed=3)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert (choice["index"], choice["finish_reason"], choice["logprobs"]) == (0, "length", None)
    assert len(choice["text"]) == 30
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}


async def test_choices_use_seed_seed_plus_one(client: httpx.AsyncClient) -> None:
    body = (await complete(client, prompt="ab", max_tokens=40, seed=5, n=2)).json()
    texts = [choice["text"] for choice in body["choices"]]
    for offset, text in enumerate(texts):
        native = await client.post(
            "/generate", json={"prime": "ab", "length": 40, "seed": 5 + offset}
        )
        assert native.json()["text"] == text
    assert texts[0] != texts[1] and [c["index"] for c in body["choices"]] == [0, 1]


async def test_temperature_zero_is_greedy(client: httpx.AsyncClient) -> None:
    body = (await complete(client, prompt="ab", max_tokens=20, temperature=0)).json()
    greedy = await client.post("/generate", json={"prime": "ab", "length": 20, "top_k": 1})
    assert body["choices"][0]["text"] == greedy.json()["text"]


async def test_several_prompts_and_echo(client: httpx.AsyncClient) -> None:
    body = (await complete(client, prompt=["ab", "xyz"], max_tokens=10, echo=True)).json()
    first, second = body["choices"]
    assert first["text"].startswith("ab") and len(first["text"]) == 12
    assert second["text"].startswith("xyz") and len(second["text"]) == 13
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}


async def test_stop_cuts_the_text_and_ends_the_job(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "limits", service.limits.model_copy(update={"max_length": 10**6}))
    before = service.engine.chars_generated
    response = await complete(
        client,
        prompt="a",
        max_tokens=10**6,
        stop=["\n\n", "zzz"],
        regex="hello\n\nworld( [a-z]+)*",
    )
    [choice] = response.json()["choices"]
    assert (choice["text"], choice["finish_reason"]) == ("hello", "stop")
    assert response.json()["usage"]["completion_tokens"] == 5
    # Ended at the stop (the engine frees the row at once), not run to the end.
    with anyio.fail_after(2):
        while service.active:
            await anyio.sleep(0.005)
    assert service.engine.chars_generated - before < 10_000


async def test_stream_chunks_and_done(client: httpx.AsyncClient) -> None:
    fields = {"prompt": "ab", "max_tokens": 60, "seed": 9, "n": 2}
    whole = (await complete(client, **fields)).json()
    response = await complete(client, stream=True, stream_options={"include_usage": True}, **fields)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = data_lines(response.text)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == whole["choices"][index]["text"]
        assert [c["finish_reason"] for c in mine][-1] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])


async def test_a_whole_completion_wakes_its_handler_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = count_chunks(monkeypatch)
    body = (await complete(client, prompt="a", max_tokens=300, n=2, seed=5)).json()
    assert [len(choice["text"]) for choice in body["choices"]] == [300, 300]
    assert read == [300, 300]  # each choice read once, at its end


async def test_a_stream_is_paced_for_its_client(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = record_pacing(service.engine, monkeypatch)
    response = await complete(client, prompt="a", max_tokens=30, stream=True)
    assert data_lines(response.text)[-1] == "[DONE]"
    assert asked and set(asked) == {"127.0.0.1"}  # the request's client, before each chunk
    asked.clear()
    await complete(client, prompt="a", max_tokens=30)
    assert asked == []  # a whole completion is not paced: it comes back as soon as it ends


async def test_stream_with_stop(client: httpx.AsyncClient) -> None:
    response = await complete(
        client, prompt="a", max_tokens=100, stop=". t", stream=True, regex="one\\. two\\. three"
    )
    chunks = [json.loads(line) for line in data_lines(response.text)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "one"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c or c["usage"] is None for c in chunks)


async def test_a_failing_stream_ends_with_an_error_chunk(
    client: httpx.AsyncClient, failing_step: Callable[[int], None]
) -> None:
    failing_step(2)  # 100 characters take 4 calls of 32 steps
    response = await complete(client, prompt="a", max_tokens=100, stream=True)
    last = json.loads(data_lines(response.text)[-1])
    assert last["error"]["type"] == "server_error" and "log" in last["error"]["message"]
    assert "out of memory" not in response.text  # the detail stays in the server's log
    whole = await complete(client, prompt="a", max_tokens=100)  # fails again, before any text
    assert whole.status_code == 500
    assert whole.json()["error"]["code"] == "generation_failed"


@pytest.mark.parametrize(
    ("fields", "status", "param", "code"),
    [
        ({"temperature": 5}, 400, "temperature", "invalid_value"),
        ({"stop": ["a", ""]}, 400, "stop.1", "invalid_value"),
        ({"max_tokens": 301}, 400, "max_tokens", "less_than_equal"),
        ({"prompt": "a" * 51}, 400, "prompt", "string_too_long"),
        ({"prompt": "café"}, 400, "prompt", "prompt_out_of_vocabulary"),
        ({"model": "gpt-4"}, 404, "model", "model_not_found"),
        ({"logprobs": 6}, 400, "logprobs", "invalid_value"),
        ({"max_tokens": -1}, 400, "max_tokens", "invalid_value"),
        ({"top_k": 2**63}, 400, "top_k", "invalid_value"),
        ({"logit_bias": {"x": 1}}, 400, "logit_bias", "unknown_token"),
        ({"logit_bias": {"99999": 1}}, 400, "logit_bias", "unknown_token"),
        ({"logit_bias": {"1": 500}}, 400, "logit_bias.1", "invalid_value"),
        ({"echo": True, "prompt": "a", "suffix": "x"}, 400, "suffix", "invalid_value"),
        ({"frequency_penalty": 5}, 400, "frequency_penalty", "invalid_value"),
        ({"regex": "(a"}, 400, "regex", "regex_invalid"),
    ],
)
async def test_errors_in_openai_shape(
    client: httpx.AsyncClient, fields: dict, status: int, param: str, code: str
) -> None:
    response = await complete(client, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    response = await client.post("/v1/completions", content=b"{oops", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["message"]


async def test_skip_unknown_is_our_extension(client: httpx.AsyncClient) -> None:
    response = await complete(client, prompt="café", skip_unknown=True, max_tokens=5)
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 3


async def test_busy_is_a_503_with_retry_after(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> None:
        raise EngineBusy("1024 requests already waiting")

    monkeypatch.setattr(service.engine, "submit", full)
    response = await complete(client, prompt="a")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "server_error"


async def test_the_api_key_is_needed_when_set(client_with: ClientWith) -> None:
    async with client_with(api_key=SecretStr("s3cret")) as client:
        response = await complete(client, prompt="a")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
        headers = {"Authorization": "Bearer s3cret"}
        ok = await client.post("/v1/completions", json={"model": "tiny"}, headers=headers)
        assert ok.status_code == 200
