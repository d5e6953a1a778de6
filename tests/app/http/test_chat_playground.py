"""The playground's Chat view (app/http/static/chat.js): its controls, and the conversation
in a real browser (Debian's chromium through Playwright, as test_playground_browser.py):
what the page shows is what POST /v1/chat/completions answers for the same messages and
seed. The browser test skips without chromium or Playwright, and fails under CI=true."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from app.http.playground import STATIC
from app.main import create_app, load_service
from app.settings import Settings
from model.chat_template import INFO_KEY, play_template
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import running_server
from tests.tools import require_tool

CONTROLS = ["chat-input", "chat-system", "chat-length", "chat-temperature", "chat-seed"]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def test_the_chat_view_has_its_tab_and_labelled_controls() -> None:
    page = (STATIC / "index.html").read_text()
    assert 'id="tab-chat"' in page and 'aria-controls="view-chat"' in page
    for control in CONTROLS:
        assert re.search(rf'<(?:input|textarea)[^>]*\bid="{control}"', page), control
        assert re.search(rf'<label for="{control}"[ >]', page), control
    assert 'import { ChatView } from "./chat.js";' in (STATIC / "app.js").read_text()


@pytest.fixture(scope="module")
def chat_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyless server of one untrained model with the play template."""
    vocab = Vocabulary.from_text(string.ascii_letters + " .,;:!?'\n")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=2))
    path = tmp_path_factory.mktemp("chat-page") / "verona.safetensors"
    info = {INFO_KEY: play_template().to_json(), "corpus": "tiny"}
    save_checkpoint(Checkpoint.from_model(model, vocab, info=info), path)
    settings = Settings(
        checkpoint=path, device="cpu", max_length=400, access_log=False, shutdown_grace_seconds=1
    )
    service = load_service(settings)
    with running_server(create_app(settings, service)) as url:
        yield url
    service.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = require_tool(
        "chromium", "/usr/bin/chromium", install="`make browser`, or apt-get install chromium"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        yield browser
        browser.close()


def reply(url: str, messages: list[dict[str, str]], seed: int) -> str:
    """What the API answers for the body the page sends."""
    body = {"model": "verona", "messages": messages, "max_tokens": 60, "temperature": 0.8}
    response = httpx.post(f"{url}/v1/chat/completions", json={**body, "seed": seed}, timeout=20)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_a_conversation_in_the_browser(browser: Any, chat_url: str) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    sent: list[dict[str, Any]] = []  # the page's chat requests' bodies
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None,
    )
    page.goto(f"{chat_url}/#chat")
    expect(page.locator("#view-chat")).to_be_visible()
    expect(page.locator("#chat-template")).to_contain_text("own chat template")

    page.fill("#chat-system", "A street.")
    page.fill("#chat-length", "60")
    page.fill("#chat-seed", "3")
    page.fill("#chat-input", "Good morrow")
    page.click("#chat-send")
    expect(page.locator("#chat-status")).to_contain_text("Reply of", timeout=10_000)
    talk = [{"role": "system", "content": "A street."}, {"role": "user", "content": "Good morrow"}]
    first = reply(chat_url, talk, 3)
    texts = page.locator("#chat-log .text")
    expect(texts).to_have_count(2)
    assert texts.nth(1).text_content() == first

    # The next message carries the conversation; Ctrl+Enter sends it.
    page.fill("#chat-input", "Whither")
    page.focus("#chat-input")
    page.keyboard.press("Control+Enter")
    expect(texts).to_have_count(4)
    expect(page.locator("#chat-send")).to_be_enabled(timeout=10_000)
    talk += [{"role": "assistant", "content": first}, {"role": "user", "content": "Whither"}]
    second = reply(chat_url, talk, 3)
    assert texts.nth(3).text_content() == second  # read after the state: the same reply
    assert "state" not in sent[0] and sent[1]["state"] and sent[1]["messages"] == talk

    # The system text changed: the state no longer begins the conversation, so the turn
    # is refused with it (400 naming state) and sent again whole.
    page.fill("#chat-system", "A square.")
    page.fill("#chat-input", "Hence")
    page.click("#chat-send")
    expect(texts).to_have_count(6)
    expect(page.locator("#chat-send")).to_be_enabled(timeout=10_000)
    talk = [{"role": "system", "content": "A square."}, *talk[1:]]
    talk += [{"role": "assistant", "content": second}, {"role": "user", "content": "Hence"}]
    assert texts.nth(5).text_content() == reply(chat_url, talk, 3)
    assert sent[2]["state"] and "state" not in sent[3] and sent[3]["messages"] == talk

    # A message the model cannot read: the error, and the message back in the box.
    page.fill("#chat-input", "héllo")
    page.click("#chat-send")
    expect(page.locator("#chat-status")).to_contain_text("Error: ")
    expect(page.locator("#chat-status")).to_contain_text("é")
    expect(texts).to_have_count(6)
    expect(page.locator("#chat-input")).to_have_value("héllo")

    page.click("#chat-clear")
    expect(texts).to_have_count(0)
    context.close()
    assert [p for p in problems if not re.search(r"status of 400", p)] == []
