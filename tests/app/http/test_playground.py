"""app/http/playground.py: the page at / and its static files (the browser drives it in
test_playground_browser.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from app.http.playground import STATIC

pytestmark = pytest.mark.anyio

SCRIPTS = sorted(path.name for path in STATIC.glob("*.js"))


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


async def test_every_module_the_scripts_import_is_served(client: httpx.AsyncClient) -> None:
    # The scripts are ES modules (no build step): each import names a file beside it, and
    # a browser runs a module only when it comes with a JavaScript media type.
    imported = set()
    for name in SCRIPTS:
        text = (STATIC / name).read_text()
        for target in re.findall(r'^import [^;]+ from "([^"]+)";', text, flags=re.MULTILINE):
            assert target.startswith("./"), f"{name} imports {target} from elsewhere"
            imported.add(target.removeprefix("./"))
    assert imported == set(SCRIPTS) - {"app.js"}  # every module is used; app.js starts them
    for name in SCRIPTS:
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert "javascript" in response.headers["content-type"], name


def test_nothing_is_fetched_from_elsewhere_and_nothing_is_inline() -> None:
    # No CDN, no web fonts: the page works offline and under its CSP, which forbids inline
    # scripts, inline styles and eval.
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} names another origin"
        assert "@import" not in text and "<script>" not in text and " style=" not in text
        assert not re.search(r"\son[a-z]+=", text), f"{path.name} has an inline handler"
    for name in SCRIPTS:
        text = (STATIC / name).read_text()
        for unsafe in ("eval(", "new Function", "innerHTML", 'setAttribute("style'):
            assert unsafe not in text, f"{name} uses {unsafe}"


def test_every_control_has_a_label() -> None:
    page = (STATIC / "index.html").read_text()
    controls = re.findall(r'<(?:input|textarea|select)[^>]*\bid="([^"]+)"', page)
    assert {
        "model", "api-key", "prime", "length", "temperature", "top-k", "top-p", "min-p", "seed",
        "repetition-penalty", "repeat-last-n", "frequency-penalty", "presence-penalty",
        "stop-1", "stop-2", "stop-3", "stop-4", "banned", "regex", "logprobs",
        "score-text", "skip-unknown",
    } <= set(controls)  # fmt: skip
    for control in controls:
        assert re.search(rf'<label for="{control}"[ >]', page), control


def test_hidden_wins_over_the_layout_rules() -> None:
    # .field and .check set `display`, which would otherwise override the hidden attribute.
    style = (STATIC / "style.css").read_text()
    assert re.search(r"\[hidden\]\s*\{\s*display:\s*none\s*!important;", style)
