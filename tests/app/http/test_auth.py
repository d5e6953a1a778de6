"""app/http/auth.py: with API_KEY set, protected routes need the bearer key; public ones don't."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from app.http.auth import key_matches
from tests.app.support import ClientWith

pytestmark = pytest.mark.anyio

KEY = "k3y-0123456789"
PROTECTED = [
    ("GET", "/model"),
    ("POST", "/generate"),
    ("POST", "/generate/stream"),
    ("GET", "/generate/stream"),
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
]
PUBLIC = ["/health", "/", "/static/app.js", "/metrics", "/docs", "/openapi.json"]


async def call(client: httpx.AsyncClient, method: str, path: str, **options: object):
    body = {"model": "tiny", "max_tokens": 3} if path.startswith("/v1") else {"length": 3}
    if method == "POST":
        return await client.post(path, json=body, **options)
    return await client.get(path, params=None if path.startswith("/v1") else body, **options)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_need_the_key(
    client_with: ClientWith, method: str, path: str
) -> None:
    async with client_with(api_key=SecretStr(KEY)) as client:
        missing = await call(client, method, path)
        wrong = await call(client, method, path, headers={"Authorization": "Bearer nope"})
        basic = await call(client, method, path, headers={"Authorization": "Basic a2V5"})
        for response in (missing, wrong, basic):
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
        right = await call(client, method, path, headers={"Authorization": f"Bearer {KEY}"})
        assert right.status_code == 200, right.text


async def test_public_routes_stay_open(client_with: ClientWith) -> None:
    async with client_with(api_key=SecretStr(KEY)) as client:
        for path in PUBLIC:
            assert (await client.get(path)).status_code == 200, path


async def test_without_a_key_everything_is_open(client: httpx.AsyncClient) -> None:
    for method, path in PROTECTED:
        assert (await call(client, method, path)).status_code == 200, path


async def test_the_docs_offer_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" in schema["paths"]["/generate"]["post"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_key_matches() -> None:
    assert key_matches(None, None)  # no key configured
    keyed = SecretStr("abc")
    assert key_matches(keyed, "abc")
    assert not key_matches(keyed, "abd") and not key_matches(keyed, None)
