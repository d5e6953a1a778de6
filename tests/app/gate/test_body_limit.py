"""app/gate/body_limit.py: MAX_BODY_BYTES, by Content-Length and while the body is read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.app.support import ClientWith

pytestmark = pytest.mark.anyio

LIMIT = 200


def padded(size: int) -> bytes:
    """A valid JSON body of exactly `size` bytes (padded with JSON's own whitespace)."""
    head = b'{"length": 5'
    return head + b" " * (size - len(head) - 1) + b"}"


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """No Content-Length: httpx sends it chunked, so only the reading can tell its size."""
    for start in range(0, len(body), 64):
        yield body[start : start + 64]


async def test_declared_too_large_is_a_413(client_with: ClientWith) -> None:
    async with client_with(max_body_bytes=LIMIT) as client:
        headers = {"content-type": "application/json"}
        ok = await client.post("/generate", content=padded(LIMIT), headers=headers)
        assert ok.status_code == 200, ok.text
        too_big = await client.post("/generate", content=padded(LIMIT + 1), headers=headers)
        assert too_big.status_code == 413
        assert "MAX_BODY_BYTES" in too_big.json()["detail"]


@pytest.mark.parametrize("path", ["/generate", "/generate/stream", "/v1/completions"])
async def test_streamed_too_large_is_a_413(client_with: ClientWith, path: str) -> None:
    async with client_with(max_body_bytes=LIMIT) as client:
        headers = {"content-type": "application/json"}
        response = await client.post(path, content=chunked(padded(LIMIT * 3)), headers=headers)
        assert response.status_code == 413, response.text
        assert (await client.get("/health")).status_code == 200
