"""What a request can ask for, through every API (native POST, both streams, /v1):
stop strings, penalties, logit_bias, min_p, logprobs, regex; exact seeds under load; and a
hostile value that must fail its own request only."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.engine.service import ModelService

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]


async def native(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


COLUMNS = ("chars", "logprobs", "top_chars", "top_logprobs")


async def streamed(client: httpx.AsyncClient, sse: Parse, body: dict, get: bool = False) -> dict:
    """The stream's text, logprobs and done event, put together like /generate's."""
    if get:
        query = {**body}
        if "stop" in query:
            query["stop"] = query["stop"]  # repeated parameters
        if "logit_bias" in query:
            import json

            query["logit_bias"] = json.dumps(query["logit_bias"])
        response = await client.get("/generate/stream", params=query)
    else:
        response = await client.post("/generate/stream", json=body)
    assert response.status_code == 200, response.text
    events = sse(response.text)
    assert events[-1][0] == "done", events[-1]
    text = "".join(data for name, data in events if name == "chars")
    pieces = [data for name, data in events if name == "logprobs"]
    logprobs = {key: [x for piece in pieces for x in piece[key]] for key in COLUMNS}
    return {"text": text, "logprobs": logprobs if pieces else None, **events[-1][1]}


async def every_api(client: httpx.AsyncClient, sse: Parse, body: dict) -> list[dict]:
    """The same request through the native POST, both streams and /v1/completions."""
    results = [
        await native(client, body),
        await streamed(client, sse, body),
        await streamed(client, sse, body, get=True),
    ]
    openai = {
        "model": "tiny",
        "prompt": body.get("prime", ""),
        "max_tokens": body.get("length"),
        "seed": body.get("seed"),
        "stop": body.get("stop"),
        **{k: body[k] for k in ("top_k", "regex", "min_p", "repetition_penalty") if k in body},
    }
    response = await client.post("/v1/completions", json=openai)
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    results.append({"text": choice["text"], "finish_reason": choice["finish_reason"]})
    return results


async def test_a_stop_string_ends_the_text_in_every_api(
    client: httpx.AsyncClient, sse: Parse
) -> None:
    body = {"prime": "x", "length": 30, "seed": 1, "regex": "ab\ncd\n\nef", "stop": ["\n\n"]}
    for result in await every_api(client, sse, body):
        assert (result["text"], result["finish_reason"]) == ("ab\ncd", "stop")


async def test_a_stop_inside_the_prime_does_not_stop(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"prime": "ab\n\nc", "length": 30, "seed": 1, "regex": "xyz", "stop": ["\n\n"]}
    for result in await every_api(client, sse, body):
        assert (result["text"], result["finish_reason"]) == ("xyz", "regex")
    straddling = {**body, "prime": "ab\n", "regex": "\nxyz"}  # "\n" + "\n": not in the output
    for result in await every_api(client, sse, straddling):
        assert result["text"] == "\nxyz" and result["finish_reason"] == "regex"


async def test_no_part_of_a_stop_string_is_ever_streamed(
    client: httpx.AsyncClient, sse: Parse, service: ModelService
) -> None:
    engine = service.engine
    engine.clients.config = dataclasses.replace(engine.clients.config, min_chunk_interval=0.0)
    try:
        # "ab" and "abc" begin the stop "abcd" twice before it completes.
        body = {"length": 40, "regex": "xab!abcxabcdyy", "stop": ["abcd"], "seed": 3}
        response = await client.post("/generate/stream", json=body)
    finally:
        engine.clients.config = dataclasses.replace(engine.clients.config, min_chunk_interval=0.02)
    chunks = [data for name, data in sse(response.text) if name == "chars"]
    assert "".join(chunks) == "xab!abcx"
    assert sse(response.text)[-1][1]["finish_reason"] == "stop"


async def test_logit_bias_bans_and_forces(client: httpx.AsyncClient, sse: Parse) -> None:
    banned = {"prime": "ab", "length": 200, "seed": 2, "logit_bias": {"e": -100, "a": -100}}
    for result in (await native(client, banned), await streamed(client, sse, banned)):
        assert "e" not in result["text"] and "a" not in result["text"]
        assert len(result["text"]) == 200
    forced = {"prime": "ab", "length": 30, "seed": 2, "logit_bias": {"q": 100}}
    assert (await native(client, forced))["text"] == "q" * 30
    ids = (await client.get("/model")).json()["vocabulary"]
    openai = {
        "model": "tiny",
        "prompt": "ab",
        "max_tokens": 30,
        "logit_bias": {str(ids.index("q")): 100},
    }
    response = await client.post("/v1/completions", json=openai)
    assert response.json()["choices"][0]["text"] == "q" * 30


async def test_penalties_change_the_text(client: httpx.AsyncClient) -> None:
    base = {"prime": "ab", "length": 200, "seed": 4, "temperature": 0.3}
    plain = (await native(client, base))["text"]
    for option in (
        {"repetition_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"min_p": 0.3},
    ):
        assert (await native(client, {**base, **option}))["text"] != plain, option


async def test_logprobs_in_the_native_api(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"prime": "To be", "length": 30, "seed": 5, "logprobs": 3, "prompt_logprobs": True}
    result = await native(client, body)
    logprobs = result["logprobs"]
    assert "".join(logprobs["chars"]) == result["text"]
    assert all(len(logprobs[key]) == len(result["text"]) for key in COLUMNS)
    for chosen, tops in zip(logprobs["logprobs"], logprobs["top_logprobs"], strict=True):
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert chosen <= tops[0] + 1e-12 and chosen <= 0
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-9
    for char, chosen, top_chars, tops in zip(*(logprobs[key] for key in COLUMNS), strict=True):
        if char in top_chars:  # the chosen char among the likeliest: the same number
            assert tops[top_chars.index(char)] == chosen
    assert "".join(result["prompt_logprobs"]["chars"]) == "o be"
    streamed_result = await streamed(client, sse, body)
    assert streamed_result["logprobs"] == logprobs
    assert streamed_result["prompt_logprobs"] == result["prompt_logprobs"]


async def test_openai_logprobs_and_echo(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "prompt": "To be", "max_tokens": 10, "seed": 5, "logprobs": 2}
    plain = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    logprobs = plain["logprobs"]
    assert "".join(logprobs["tokens"]) == plain["text"]
    assert logprobs["text_offset"] == list(range(10))
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    echoed = (await client.post("/v1/completions", json={**body, "echo": True})).json()
    choice = echoed["choices"][0]
    assert choice["text"] == "To be" + plain["text"]
    assert choice["logprobs"]["tokens"] == list("To be") + logprobs["tokens"]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert choice["logprobs"]["token_logprobs"][5:] == logprobs["token_logprobs"]
    native_prompt = await native(
        client, {"prime": "To be", "length": 1, "logprobs": 2, "prompt_logprobs": True}
    )
    assert choice["logprobs"]["token_logprobs"][1:5] == native_prompt["prompt_logprobs"]["logprobs"]
    top_prompt = native_prompt["prompt_logprobs"]
    assert choice["logprobs"]["top_logprobs"][1:5] == [
        dict(zip(chars, lps, strict=True))
        for chars, lps in zip(top_prompt["top_chars"], top_prompt["top_logprobs"], strict=True)
    ]
    # max_tokens 0 with echo and logprobs scores the prompt alone, as OpenAI's API does.
    scored = (
        await client.post("/v1/completions", json={**body, "echo": True, "max_tokens": 0})
    ).json()
    assert scored["choices"][0]["text"] == "To be"
    assert (
        scored["choices"][0]["logprobs"]["token_logprobs"]
        == choice["logprobs"]["token_logprobs"][:5]
    )
    assert scored["usage"]["completion_tokens"] == 0


def crowd_bodies() -> Iterator[dict]:
    for n in range(30):
        yield {
            "prime": "abc"[: n % 3 + 1] * (n % 7 + 1),
            "length": 60 + n,
            "seed": 100 + n,
            "temperature": 0.5 + n / 30,
            **({"stop": ["zz"], "repetition_penalty": 1.4} if n % 2 else {}),
            **({"logprobs": n % 6} if n % 3 == 0 else {}),
            **({"regex": "[a-m]+ [n-z]+"} if n % 5 == 0 else {}),
        }


@pytest.mark.parametrize(
    "target",
    [
        {
            "repetition_penalty": 1.5,
            "repeat_last_n": 8,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logprobs": 5,
            "stop": ["qq", "x."],
            "min_p": 0.05,
        },
        {"regex": "[A-Z][a-z]+( [a-z]+){3,8}\\.", "logprobs": 2, "top_k": 10},
    ],
    ids=["penalties-logprobs", "regex"],
)
async def test_exact_seeds_under_a_30_stream_load(
    client: httpx.AsyncClient, sse: Parse, target: dict
) -> None:
    body = {"prime": "The ", "length": 150, "seed": 77, **target}
    alone = await streamed(client, sse, body)
    results: dict[int, dict] = {}

    async def run(index: int, request: dict) -> None:
        results[index] = await streamed(client, sse, request)

    async with anyio.create_task_group() as group:
        for index, other in enumerate(crowd_bodies()):
            group.start_soon(run, index, other)
            if index == 15:
                group.start_soon(run, -1, body)
    assert results[-1] == {**alone, "stats": results[-1]["stats"]}
    assert all(
        result["finish_reason"] in {"length", "stop", "regex"} for result in results.values()
    )


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("post", "/generate", {"prime": "a", "length": 5, "top_k": 9223372036854775808}),
        ("post", "/generate/stream", {"prime": "a", "length": 5, "top_k": 9223372036854775808}),
        ("get", "/generate/stream", {"prime": "a", "length": 5, "top_k": 9223372036854775808}),
        (
            "post",
            "/v1/completions",
            {"model": "tiny", "prompt": "a", "max_tokens": 5, "top_k": 9223372036854775808},
        ),
        ("post", "/generate", {"prime": "a", "regex": "(a|b)*a(a|b){40}"}),
        ("post", "/generate", {"prime": "a", "temperature": 1e308}),
        ("post", "/generate", {"prime": "a", "logit_bias": {"a": -1e308}}),
    ],
)
async def test_a_hostile_value_fails_its_request_alone(
    client: httpx.AsyncClient, sse: Parse, method: str, path: str, payload: dict
) -> None:
    """Ten streams run while one request carries a hostile value: it gets a clear 4xx
    naming the field; all ten finish with their full length."""
    results: list[dict] = []

    async def good(seed: int) -> None:
        results.append(await streamed(client, sse, {"prime": "ab", "length": 150, "seed": seed}))

    async with anyio.create_task_group() as group:
        for seed in range(10):
            group.start_soon(good, seed)
        await anyio.sleep(0.01)
        if method == "get":
            response = await client.get(path, params=payload)
        else:
            response = await client.post(path, json=payload)
    assert 400 <= response.status_code < 500, response.text
    assert any(key in response.text for key in ("top_k", "regex", "temperature", "logit_bias"))
    assert [len(result["text"]) for result in results] == [150] * 10
