"""app/playground.py: the page at / and its static files (the browser drives it in
test_playground_browser.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from app.playground import STATIC

pytestmark = pytest.mark.anyio


async def test_the_page_is_served_at_the_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<title>char-rnn playground</title>" in response.text


async def test_every_file_the_page_names_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    assert sorted(assets) == ["static/app.js", "static/style.css"]
    for asset in assets:
        response = await client.get(f"/{asset}")
        assert response.status_code == 200, asset
    assert (await client.get("/static/nothing.js")).status_code == 404


def test_nothing_is_fetched_from_elsewhere() -> None:
    # No CDN, no web fonts: the page works offline and under its CSP.
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} names another origin"
        assert "@import" not in text and "<script>" not in text and " style=" not in text


def test_every_control_has_a_label() -> None:
    page = (STATIC / "index.html").read_text()
    controls = re.findall(r'<(?:input|textarea)[^>]*\bid="([^"]+)"', page)
    assert {"prime", "length", "top-k", "temperature", "top-p", "seed", "api-key"} <= set(controls)
    for control in controls:
        assert f'<label for="{control}">' in page, control
