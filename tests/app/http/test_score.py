"""POST /score: per-character surprisal through the engine, equal to the network's own
log-probabilities, in slices that leave running streams moving."""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import torch

from app.engine.service import ModelService

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind"


async def test_scores_are_the_networks_log_probabilities(
    client: httpx.AsyncClient, service: ModelService
) -> None:
    response = await client.post("/score", json={"text": TEXT, "top_n": 3})
    assert response.status_code == 200, response.text
    result = response.json()
    served = service.model()
    ids = served.vocab.encode(TEXT)
    with torch.no_grad():
        logits, _ = served.model(torch.tensor([ids]))
    expected = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    expected = expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    assert result["logprobs"][0] is None and result["surprisal_bits"][0] is None
    np.testing.assert_allclose(result["logprobs"][1:], expected, atol=1e-5)
    np.testing.assert_allclose(result["surprisal_bits"][1:], -expected / math.log(2), atol=1e-5)
    assert result["chars"] == len(TEXT) - 1 and result["text"] == TEXT
    assert result["nats_per_char"] == pytest.approx(-expected.mean(), abs=1e-6)
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(result["nats_per_char"]))
    top_chars, top_logprobs = result["top_chars"], result["top_logprobs"]
    assert top_chars[0] == [] == top_logprobs[0]
    assert all(len(chars) == 3 for chars in top_chars[1:])
    for position, tops in enumerate(top_logprobs[1:], start=1):
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert tops[0] >= result["logprobs"][position] - 1e-12
        char = TEXT[position]
        if char in top_chars[position]:
            assert tops[top_chars[position].index(char)] == result["logprobs"][position]


async def test_a_long_text_goes_through_in_slices_beside_a_stream(
    client: httpx.AsyncClient, sse: Parse
) -> None:
    rng = np.random.default_rng(0)
    letters = list(string.ascii_lowercase + " ")
    long_text = "".join(rng.choice(letters, size=60_000))  # 1,200 × MAX_PRIME_LENGTH
    results: dict[str, Any] = {}

    async def stream() -> None:
        response = await client.post("/generate/stream", json={"length": 300, "seed": 1})
        results["stream"] = "".join(data for name, data in sse(response.text) if name == "chars")

    async def score() -> None:
        results["score"] = (await client.post("/score", json={"text": long_text})).json()

    async with anyio.create_task_group() as group:
        group.start_soon(score)
        await anyio.sleep(0.05)
        group.start_soon(stream)
    assert len(results["stream"]) == 300
    assert results["score"]["chars"] == 60_000 - 1
    # The stream did not wait for the whole text: it ended first.
    alone = (await client.post("/score", json={"text": long_text})).json()
    assert alone["logprobs"] == results["score"]["logprobs"]


async def test_unknown_characters_are_listed_or_left_out(client: httpx.AsyncClient) -> None:
    refused = await client.post("/score", json={"text": "héllo wörld"})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "text"] and error["ctx"]["missing"] == ["é", "ö"]
    kept = (await client.post("/score", json={"text": "héllo wörld", "skip_unknown": True})).json()
    plain = (await client.post("/score", json={"text": "hllo wrld"})).json()
    assert kept["oov_chars"] == 2 and kept["text"] == "hllo wrld"
    assert kept["logprobs"] == plain["logprobs"]


async def test_crlf_reads_as_lf(client: httpx.AsyncClient) -> None:
    crlf = (await client.post("/score", json={"text": "ab\r\ncd"})).json()
    lf = (await client.post("/score", json={"text": "ab\ncd"})).json()
    assert crlf["logprobs"] == lf["logprobs"] and crlf["text"] == "ab\ncd"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "a"}, "text"),
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({"text": "€€€"}, "text"),
        ({"text": "ab", "top_n": 6}, "top_n"),
        ({"text": "ab", "top_n": -1}, "top_n"),
        ({"text": "ab", "colour": 1}, "colour"),
        ({}, "text"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict, field: str
) -> None:
    response = await client.post("/score", json=body)
    assert response.status_code == 422, response.text
    assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]]


async def test_its_own_size_limits(
    client_with: Callable[..., Any], service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        service, "limits", service.limits.model_copy(update={"max_score_chars": 100_000})
    )
    async with client_with(max_score_chars=100_000) as client:
        text = "ab " * 30_000  # 90 kB: over MAX_BODY_BYTES, under the text limit
        assert (await client.post("/score", json={"text": text})).status_code == 200
        too_long = await client.post("/score", json={"text": "ab " * 40_000})
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["type"] == "string_too_long"
        # Other routes keep MAX_BODY_BYTES.
        big = await client.post("/generate", json={"prime": "a" * 70_000})
        assert big.status_code == 413
        huge = await client.post("/score", content=b" " * 2_000_000)
        assert huge.status_code == 413


@pytest.mark.parametrize(
    ("top_n", "length", "field"), [(5, 3_000, "top_n"), (0, 11_000, "text"), (1, 11_000, "text")]
)
async def test_a_score_past_its_memory_budget_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    service: ModelService,
    monkeypatch: pytest.MonkeyPatch,
    top_n: int,
    length: int,
    field: str,
) -> None:
    monkeypatch.setattr(
        service, "limits", service.limits.model_copy(update={"max_score_cells": 10_000})
    )
    queued = service.engine.queued
    response = await client.post("/score", json={"text": "ab " * (length // 3), "top_n": top_n})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:2] == ["body", field] and error["type"] == "score_too_big"
    assert error["ctx"]["max_score_cells"] == 10_000 and "MAX_SCORE_CELLS" in error["msg"]
    assert service.engine.queued == queued  # refused before the queue
    within = await client.post("/score", json={"text": "ab " * 600, "top_n": 5})  # 9,000 cells
    assert within.status_code == 200, within.text


@pytest.mark.parametrize("top_n", [0, 3])
async def test_the_body_written_in_pieces_is_the_score_response(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, top_n: int
) -> None:
    from app.http import score_body
    from app.http.schemas import ScoreResponse

    text = TEXT * 3
    whole = (await client.post("/score", json={"text": text, "top_n": top_n})).json()
    monkeypatch.setattr(score_body, "PIECE_CHARS", 7)  # many pieces, the last a short one
    response = await client.post("/score", json={"text": text, "top_n": top_n})
    assert response.headers["content-type"] == "application/json"
    pieces = ScoreResponse.model_validate_json(response.content)  # the documented shape
    assert pieces.logprobs[0] is None and len(pieces.logprobs) == len(text)
    assert len(pieces.surprisal_bits) == len(text)
    if top_n:
        assert pieces.top_chars is not None and pieces.top_chars[0] == []
        assert all(len(row) == top_n for row in pieces.top_chars[1:])
        assert pieces.top_logprobs is not None and len(pieces.top_logprobs) == len(text)
    else:
        assert pieces.top_chars is None and pieces.top_logprobs is None
    in_pieces = response.json()
    for field in ("logprobs", "surprisal_bits", "top_chars", "top_logprobs", "text", "nats"):
        assert in_pieces[field] == whole[field]
