"""The playground in a real browser: Debian's chromium driven by Playwright, against the
service under uvicorn. Two servers: one with an API key and a slowed model (streaming,
Stop), one without a key serving two models from MODELS_DIR (every other control). What
the tests check is what is visible, not only what is in the DOM. Skipped only when
chromium or Playwright is missing (`make test` installs both; Playwright's own browser
download is never used); without chromium under CI=true they fail (tests/tools.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import SecretStr

from app.engine.service import ModelService
from app.main import create_app, load_service
from app.settings import Settings
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import running_server
from tests.tools import require_tool

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

KEY = "browser-key"
ARGS = [
    "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# What the page sends by default, besides what a test fills in.
PAGE_DEFAULTS = {"temperature": 0.8, "top_p": 1}
# Chromium logs every non-2xx fetch as a console error; these ones the tests ask for.
EXPECTED_CONSOLE = re.compile(r"status of (401|422)")


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
def open_url(tmp_path_factory: pytest.TempPathFactory, vocab: Vocabulary) -> Iterator[str]:
    """No API key, two untrained models (alpha, the default, and beta) with their own
    training records."""
    folder = tmp_path_factory.mktemp("models")
    for seed, (name, loss) in enumerate((("alpha", 1.1), ("beta", 2.2))):
        torch.manual_seed(seed)
        model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16))
        info = {"val_loss": loss, "val_bits_per_char": loss / 0.693, "corpus": f"{name}-corpus"}
        path = folder / f"{name}.safetensors"
        save_checkpoint(Checkpoint.from_model(model, vocab, info=info), path)
    settings = Settings(
        checkpoint=None,
        models_dir=folder,
        device="cpu",
        max_length=3000,
        max_prime_length=50,
        access_log=False,
        models_poll_seconds=0,
        shutdown_grace_seconds=1,
    )
    service = load_service(settings)
    with running_server(create_app(settings, service)) as url:
        yield url
    service.stop()


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Debian's chromium, looked for before any server of this module starts."""
    return require_tool(
        "chromium", "/usr/bin/chromium", install="`make browser`, or apt-get install chromium"
    )


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, open_url: str) -> Iterator[Any]:
    """A fresh page of the keyless server, ready; it must log no error of its own."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(open_url)
    expect(page.locator("#status")).to_have_text("Ready.")
    yield page
    context.close()
    assert [p for p in problems if not EXPECTED_CONSOLE.search(p)] == []


def generated(url: str, **body: Any) -> dict[str, Any]:
    """What POST /generate answers for the body the page sends."""
    response = httpx.post(f"{url}/generate", json={**PAGE_DEFAULTS, **body})
    assert response.status_code == 200, response.text
    return response.json()


def at_least(chars: int) -> re.Pattern[str]:
    """For expect(...).to_have_text: Playwright's own polling (the page's CSP forbids the
    eval that wait_for_function would need)."""
    return re.compile(rf"[\s\S]{{{chars}}}")


def wait_idle(service: ModelService) -> None:
    deadline = time.monotonic() + 2
    while service.active:
        assert time.monotonic() < deadline, "the stopped generation kept running"
        time.sleep(0.01)


def escaped(text: str) -> str:
    """As typed into a stop or banned box: backslash escapes for \\, newline and tab."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def test_playground_streams_and_stops(
    browser: Any, base_url: str, slow_service: ModelService, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    # The server wants a key: the page asks for it, then shows the model.
    page.goto(base_url)
    expect(page.locator("#key-row")).to_be_visible()
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # `change`: stored, and the model info reloads
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#model-corpus")).to_have_text("tiny (12.3K chars)")
    expect(page.locator("#model-loss")).to_have_text("1.250")
    expect(page.locator("#model-bpc")).to_have_text("1.800")
    expect(page.locator("#model-vocab")).to_have_text(f"{len(slow_service.model().vocab)} chars")
    expect(page.locator("#model-device")).to_have_text("cpu")

    # A whole generation: the streamed text is the server's for that seed.
    page.fill("#prime", "ROMEO")
    page.fill("#length", "40")
    page.fill("#seed", "5")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by tiny: 40 characters", timeout=10_000)
    expect(page.locator("#status")).to_contain_text("reached the length")
    expected = httpx.post(
        f"{base_url}/generate",
        json={"prime": "ROMEO", "length": 40, "seed": 5, **PAGE_DEFAULTS},
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
    expect(page.locator("#model")).to_have_value("tiny")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(tmp_path / "playground-phone.png"), full_page=True)

    assert [p for p in problems if "status of 401" not in p] == []
    context.close()


def test_without_a_key_the_key_row_is_hidden(page: Any) -> None:
    expect(page.locator("#key-row")).to_be_hidden()
    expect(page.locator("#api-key")).to_be_hidden()
    expect(page.locator("#prime")).to_be_visible()


def test_a_stop_string_ends_the_text_before_it(page: Any, open_url: str) -> None:
    text = generated(open_url, prime="ROMEO", length=200, seed=11)["text"]
    # A stop holding a newline where there is one (it is typed as \n), else any 3 chars.
    at = text.find("\n", 20)
    stop = text[at - 1 : at + 1] if 0 < at < 150 else text[60:63]
    page.fill("#prime", "ROMEO")
    page.fill("#length", "200")
    page.fill("#seed", "11")
    page.fill("#stop-2", escaped(stop))
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("stopped at a stop string")
    shown = page.locator("#output-text").text_content()
    assert shown == text[: text.find(stop)]
    assert stop not in shown


def test_banned_characters_never_appear(page: Any, open_url: str) -> None:
    banned = "e a\n"
    free = generated(open_url, prime="ab", length=3000, seed=2)["text"]
    assert all(char in free for char in banned)  # they would appear unbanned
    page.fill("#prime", "ab")
    page.fill("#length", "3000")
    page.fill("#seed", "2")
    page.fill("#banned", escaped(banned) + "é")
    # é is not in the vocabulary: the page says so, and leaves it out of the request.
    expect(page.locator("#banned-note")).to_be_visible()
    expect(page.locator("#banned-note")).to_contain_text("é")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by alpha: 3000 characters")
    text = page.locator("#output-text").text_content() or ""
    assert len(text) == 3000
    assert not set(banned) & set(text)


def test_probabilities_show_on_hover(page: Any, open_url: str) -> None:
    reply = generated(open_url, prime="ab", length=60, seed=4, logprobs=5)
    page.fill("#prime", "ab")
    page.fill("#length", "60")
    page.fill("#seed", "4")
    page.check("#logprobs")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by alpha: 60 characters")
    chars = page.locator("#output-text span")
    expect(chars).to_have_count(60)
    assert page.locator("#output-text").text_content() == reply["text"]
    expect(page.locator("#legend-generate")).to_be_visible()
    tip = page.locator("#tip")
    expect(tip).to_be_hidden()
    for index in (7, 33):
        logprob = reply["logprobs"]["logprobs"][index]
        chars.nth(index).hover()
        expect(tip).to_be_visible()
        expect(tip).to_contain_text(f"logprob {logprob:.3f}")
        expect(tip.locator("li").first).to_contain_text(reply["logprobs"]["top_chars"][index][0])
        expect(tip.locator("li")).to_have_count(5)
        expect(chars.nth(index)).to_have_class(re.compile(r"\bheat\d\b"))
    page.mouse.move(5, 5)
    expect(tip).to_be_hidden()


def test_the_model_picker_drives_requests(page: Any, open_url: str) -> None:
    picker = page.locator("#model")
    expect(picker.locator("option")).to_have_text(["alpha", "beta"])
    expect(picker).to_have_value("alpha")
    expect(page.locator("#model-corpus")).to_have_text("alpha-corpus")
    expect(page.locator("#model-loss")).to_have_text("1.100")
    picker.select_option("beta")
    expect(page.locator("#model-corpus")).to_have_text("beta-corpus")
    expect(page.locator("#model-loss")).to_have_text("2.200")
    page.fill("#prime", "ab")
    page.fill("#length", "50")
    page.fill("#seed", "9")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by beta: 50 characters")
    expect(page.locator("#output-model")).to_have_text("by beta")
    expected = generated(open_url, prime="ab", length=50, seed=9, model="beta")["text"]
    assert page.locator("#output-text").text_content() == expected
    assert expected != generated(open_url, prime="ab", length=50, seed=9)["text"]


def test_the_score_view_shades_each_character(page: Any, open_url: str) -> None:
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler"
    scored = httpx.post(f"{open_url}/score", json={"text": text, "top_n": 5}).json()
    expect(page.locator("#view-score")).to_be_hidden()
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")  # the tabs follow the keyboard
    expect(page.locator("#view-score")).to_be_visible()
    expect(page.locator("#view-generate")).to_be_hidden()
    page.fill("#score-text", text)
    page.click("#score-button")
    expect(page.locator("#score-bpc")).to_have_text(f"{scored['bits_per_char']:.3f}")
    expect(page.locator("#score-chars")).to_have_text(str(len(text) - 1))
    chars = page.locator("#heatmap span")
    expect(chars).to_have_count(len(text))
    assert page.locator("#heatmap").text_content() == text
    # Every character but the first (which has no prediction) is shaded.
    expect(page.locator('#heatmap span[class*="heat"]')).to_have_count(len(text) - 1)
    expect(chars.first).not_to_have_class(re.compile("heat"))
    chars.nth(12).hover()
    expect(page.locator("#tip")).to_be_visible()
    expect(page.locator("#tip")).to_contain_text(f"{scored['surprisal_bits'][12]:.2f} bits")
    # The most surprising spans: 5, the first the 8-character window of highest surprisal.
    expect(page.locator("#surprises li")).to_have_count(5)
    bits = scored["surprisal_bits"]
    top = max(sum(bits[start : start + 8]) for start in range(1, len(bits) - 7))
    expect(page.locator("#surprises li").first).to_contain_text(f"{top:.1f} bits")
    expect(page.locator("#score-oov-row")).to_be_hidden()

    # A character the model does not know: the server's 422, then skip_unknown.
    unknown = "To bé"
    answer = httpx.post(f"{open_url}/score", json={"text": unknown})
    assert answer.status_code == 422
    page.fill("#score-text", unknown)
    page.click("#score-button")
    expect(page.locator("#score-status")).to_have_text(
        f"Error: text: {answer.json()['detail'][0]['msg']}"
    )
    page.check("#skip-unknown")
    page.focus("#score-text")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#score-status")).to_contain_text("Scored by alpha")
    expect(page.locator("#score-oov-row")).to_be_visible()
    expect(page.locator("#score-oov")).to_have_text("1")
    expect(page.locator("#heatmap span")).to_have_count(4)


def test_a_422_shows_the_servers_message(page: Any, open_url: str) -> None:
    answer = httpx.post(f"{open_url}/generate", json={"regex": "[a-"})
    assert answer.status_code == 422
    page.fill("#regex", "[a-")
    page.click("#generate")
    message = answer.json()["detail"][0]["msg"]
    expect(page.locator("#status")).to_have_text(f"Error: regex: {message}")
    expect(page.locator("#generate")).to_be_enabled()


def test_a_regex_generation_says_it_matched(page: Any, open_url: str) -> None:
    page.fill("#prime", "ab")
    page.fill("#regex", "[a-z]{3} [a-z]{2}")
    page.fill("#length", "100")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("the regex matched")
    assert re.fullmatch("[a-z]{3} [a-z]{2}", page.locator("#output-text").text_content() or "")


def test_continue_carries_the_story_on_from_its_state(page: Any, open_url: str) -> None:
    """Continue sends back the state the last generation returned: each part is what the
    API gives for that state, and the story grows past MAX_PRIME_LENGTH (50 here)."""
    expect(page.locator("#continue")).to_be_hidden()
    page.fill("#prime", "ab")
    page.fill("#length", "40")
    page.fill("#seed", "5")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by alpha: 40 characters")
    expect(page.locator("#continue")).to_be_visible()
    first = generated(open_url, prime="ab", length=40, seed=5, return_state=True)
    story, state = first["text"], first["state"]
    assert page.locator("#output-text").text_content() == story
    page.fill("#prime", "not sent: Continue carries on the story shown")
    page.check("#logprobs")  # the continued characters are shaded, the first ones not
    for seed in (6, 7):
        page.fill("#length", "30")
        page.fill("#seed", str(seed))
        page.click("#continue")
        expect(page.locator("#status")).to_contain_text(f"Story: {2 + len(story) + 30} characters")
        body = {"state": state, "length": 30, "seed": seed, "logprobs": 5, "return_state": True}
        part = generated(open_url, **body)
        story, state = story + part["text"], part["state"]
        assert page.locator("#output-text").text_content() == story
    assert page.locator("#output-prime").text_content() == "ab"
    assert len("ab" + story) > 50
    expect(page.locator("#output-text span[data-i='40']")).to_have_class(re.compile("heat"))
    page.hover("#output-text span[data-i='99']")
    expect(page.locator(".tip-title")).to_contain_text("bits")
    # Generate starts a new story from the prime.
    page.fill("#prime", "ab")
    page.fill("#length", "10")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done by alpha: 10 characters")
    assert len(page.locator("#output-text").text_content() or "") == 10


def test_on_a_phone_nothing_scrolls_sideways(page: Any) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.click("#tab-score")
    page.click("#score-button")
    expect(page.locator("#score-status")).to_contain_text("Scored by alpha")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
