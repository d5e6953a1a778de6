"""The playground in a real browser: Debian's chromium driven by Playwright, against the
service under uvicorn with an API key set. Skipped only when chromium or Playwright is
missing (`make test` installs both; Playwright's own browser download is never used)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_server
from pydantic import SecretStr

from app.main import create_app, load_service
from app.service import ModelService
from app.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

KEY = "browser-key"
ARGS = [
    "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def slow_service(settings: Settings) -> Iterator[ModelService]:
    """Its own model, long lengths allowed and ~2 ms a step: a stream lasts until Stop."""
    service = load_service(settings.model_copy(update={"max_length": 100_000}))
    decoder = service.model().lane.decoder
    step = decoder.step

    def slow_step(*args: Any) -> Any:
        time.sleep(0.002)
        return step(*args)

    decoder.step = slow_step  # type: ignore[method-assign]
    yield service
    service.stop()


@pytest.fixture(scope="module")
def base_url(settings: Settings, slow_service: ModelService) -> Iterator[str]:
    keyed = settings.model_copy(
        update={"api_key": SecretStr(KEY), "access_log": False, "shutdown_grace_seconds": 1}
    )
    with running_server(create_app(keyed, slow_service)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def at_least(chars: int) -> re.Pattern[str]:
    """For expect(...).to_have_text: Playwright's own polling (the page's CSP forbids the
    eval that wait_for_function would need)."""
    return re.compile(rf"[\s\S]{{{chars}}}")


def wait_idle(service: ModelService) -> None:
    deadline = time.monotonic() + 2
    while service.active:
        assert time.monotonic() < deadline, "the stopped generation kept running"
        time.sleep(0.01)


def test_playground_streams_and_stops(
    browser: Any, base_url: str, slow_service: ModelService, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    expected_401 = "status of 401"  # the page's first /model, before it has the key
    expect = sync_api.expect

    # The server wants a key: the page asks for it, then shows the model.
    page.goto(base_url)
    expect(page.locator("#key-row")).to_be_visible()
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # `change`: stored, and the model info reloads
    expect(page.locator("#model-name")).to_have_text("tiny")
    expect(page.locator("#model-loss")).to_have_text("1.250")
    expect(page.locator("#model-bpc")).to_have_text("1.800")
    expect(page.locator("#model-vocab")).to_have_text(f"{len(slow_service.model().vocab)} chars")
    expect(page.locator("#model-device")).to_have_text("cpu")

    # A whole generation: the streamed text is the server's for that seed.
    page.fill("#prime", "ROMEO")
    page.fill("#length", "40")
    page.fill("#seed", "5")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done: 40 characters", timeout=10_000)
    expected = httpx.post(
        f"{base_url}/generate",
        json={"prime": "ROMEO", "length": 40, "seed": 5, "temperature": 0.8, "top_p": 1},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["text"]
    assert page.locator("#output-text").text_content() == expected
    assert page.locator("#output-prime").text_content() == "ROMEO"

    # From the keyboard: Ctrl+Enter in the prime starts, text streams in, Escape stops.
    page.fill("#length", "100000")
    page.fill("#seed", "")
    page.focus("#prime")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#stop")).to_be_enabled()
    text = page.locator("#output-text")
    expect(text).to_have_text(at_least(30))
    expect(text).to_have_text(at_least(len(text.text_content() or "") + 20))  # still growing
    page.screenshot(path=str(tmp_path / "playground-streaming.png"))
    page.keyboard.press("Escape")
    expect(page.locator("#status")).to_contain_text("Stopped after")
    expect(page.locator("#generate")).to_be_enabled()
    wait_idle(slow_service)

    # The Stop button does the same.
    page.click("#generate")
    expect(text).to_have_text(at_least(10))
    page.click("#stop")
    expect(page.locator("#status")).to_contain_text("Stopped after")
    wait_idle(slow_service)
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

    # A phone-sized screen: no sideways scrolling; the key was kept in localStorage.
    page.set_viewport_size({"width": 375, "height": 740})
    page.reload()
    expect(page.locator("#model-name")).to_have_text("tiny")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(tmp_path / "playground-phone.png"), full_page=True)

    assert [p for p in problems if expected_401 not in p] == []
    context.close()
