"""The official `openai` client, unchanged, against the service under real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from app.engine.service import ModelService
from app.main import create_app
from app.settings import Settings
from tests.app.support import running_server

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")

KEY = "test-key"


@pytest.fixture(scope="module")
def base_url(settings: Settings, service: ModelService) -> Iterator[str]:
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY), "access_log": False})
    with running_server(create_app(keyed, service)) as url:
        yield f"{url}/v1"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=20)


def test_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["tiny"]


def test_completion(client: openai.OpenAI) -> None:
    fields = {"model": "tiny", "prompt": "ROMEO", "max_tokens": 40, "temperature": 0.8}
    completion = client.completions.create(seed=7, n=2, **fields)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all(len(c.text) == 40 and c.finish_reason == "length" for c in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens == 80
    again = client.completions.create(seed=8, **fields)  # choice 1 had seed 7 + 1
    assert again.choices[0].text == completion.choices[1].text


def test_streamed_completion(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt="ab", max_tokens=60, seed=3)
    stream = client.completions.create(
        model="tiny",
        prompt="ab",
        max_tokens=60,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 60


def test_stop_and_our_extensions(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny",
        prompt="héllo",
        max_tokens=200,
        stop=["e", "a"],
        seed=1,
        extra_body={"skip_unknown": True, "top_k": 5},
    )
    choice = completion.choices[0]
    assert "e" not in choice.text and "a" not in choice.text
    assert choice.finish_reason in {"stop", "length"}


def test_errors_are_the_clients_exceptions(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="a", max_tokens=10**6)
    assert caught.value.body["param"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a")
    wrong = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
