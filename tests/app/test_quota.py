"""app/quota.py: a client at its quota gets its 429 before its request is read."""

from __future__ import annotations

import httpx
import pytest

from app.service import ModelService

pytestmark = pytest.mark.anyio


@pytest.fixture
def full(service: ModelService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.engine, "client_full", lambda client: client == "127.0.0.1")


async def test_a_client_at_its_quota_is_refused_early(
    client: httpx.AsyncClient, full: None
) -> None:
    # Not even a valid body: the refusal comes before the body is read or checked.
    for path in ("/generate", "/generate/stream", "/score"):
        response = await client.post(path, content=b"{not json")
        assert response.status_code == 429, path
        assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
        assert "too many requests" in response.json()["detail"]
    openai = await client.post("/v1/completions", content=b"{")
    assert openai.status_code == 429
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    # What does not submit work is not refused.
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/model")).status_code == 200


async def test_other_clients_are_not_refused(
    service: ModelService, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.engine, "client_full", lambda client: client == "10.9.9.9")
    assert (await client.post("/generate", json={"length": 3})).status_code == 200


def test_client_full_follows_the_engines_count(service: ModelService) -> None:
    engine = service.engine
    assert not engine.client_full("10.1.1.1")
    engine._per_client["10.1.1.1"] = engine.config.max_requests_per_client
    try:
        assert engine.client_full("10.1.1.1")
    finally:
        del engine._per_client["10.1.1.1"]
