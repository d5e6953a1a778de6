"""app/http/openai_routes.py: a /v1 request's regex compiles as a native one's does, in a
worker process while the request holds one of its client's places (429 in OpenAI's shape
past the quota), and a cached pattern is served at once, whatever compiles."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.app.support import until

pytestmark = pytest.mark.anyio

SLOW = "(a|b)*a(a|b){%d}"  # 2^N states: refused at the compile deadline


def complete(http: httpx.AsyncClient, client: str, regex: str) -> Any:
    body = {"model": "tiny", "prompt": "a", "max_tokens": 3, "regex": regex}
    return http.post("/v1/completions", json=body, headers={"X-Forwarded-For": client})


def chat(http: httpx.AsyncClient, client: str, regex: str) -> Any:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "ab"}],
        "max_tokens": 3,
        "regex": regex,
    }
    return http.post("/v1/chat/completions", json=body, headers={"X-Forwarded-For": client})


@pytest.mark.parametrize("send", [complete, chat])
async def test_a_v1_compile_counts_against_its_clients_quota(
    regex_service, monkeypatch: pytest.MonkeyPatch, send: Any
) -> None:
    http, service = regex_service
    monkeypatch.setattr(service.engine.clients, "limit", 2)
    waiting = [asyncio.create_task(send(http, "10.0.0.1", SLOW % n)) for n in (20, 21)]
    # The two compiles hold both places before any job is submitted.
    await until(lambda: service.engine.clients.full("10.0.0.1"), 10)
    assert service.engine.active + service.engine.queued == 0
    refused = await send(http, "10.0.0.1", "[ab]+c")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "rate_limit_exceeded")
    assert (await send(http, "10.0.0.2", "[ab]+c")).status_code == 200
    for answer in await asyncio.gather(*waiting):
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == ("regex", "regex_too_complex")
    assert not service.engine.clients.full("10.0.0.1")
    assert (await send(http, "10.0.0.1", "[ab]+c")).status_code == 200


@pytest.mark.parametrize("send", [complete, chat])
async def test_a_cached_pattern_is_served_at_once_while_its_client_compiles(
    regex_service, send: Any
) -> None:
    http, service = regex_service
    regexes = service.model().regexes
    assert (await send(http, "10.0.0.1", "[ab]+")).status_code == 200
    slow = asyncio.create_task(send(http, "10.0.0.1", SLOW % 22))
    await until(lambda: regexes.compiling == 1, 10)
    started = time.monotonic()
    answer = await send(http, "10.0.0.1", "[ab]+")
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 1.0 and not slow.done()
    assert (await slow).status_code == 400


async def test_a_v1_regex_never_runs_in_anyios_threads(
    regex_service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compile is the regex compiler's, awaited: the blocking path (a thread that
    waits for the compile, charged to no client) is never taken."""
    http, service = regex_service
    regexes = service.model().regexes

    def blocking(pattern: str) -> Any:
        raise AssertionError(f"compiled {pattern!r} in a blocking thread")

    monkeypatch.setattr(regexes, "get", blocking)
    for send in (complete, chat):
        answer = await send(http, "10.0.0.3", "[ab]{2}")
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["choices"]) == 1


@pytest.mark.parametrize(
    ("regex", "code"),
    [("(unclosed", "regex_invalid"), ("a" * 300, "string_length"), (SLOW % 23, None)],
)
async def test_a_bad_v1_regex_is_a_400_naming_it(regex_service, regex: str, code: Any) -> None:
    http, _ = regex_service
    for send in (complete, chat):
        answer = await send(http, "10.0.0.4", regex)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "regex"
        assert code is None or error["code"] == code
