"""The clients people chat with, unchanged, against the service under real uvicorn: the
openai SDK's chat.completions, LangChain's ChatOpenAI and the `llm` command line (a model
in its extra-openai-models.yaml). A reply is the same whichever client asks, and the same
as /v1/completions of the rendered conversation with the same seed."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai  # a dev dependency: missing is a failure
import pytest
import torch
from pydantic import SecretStr

from app.engine.service import ModelService
from app.main import create_app, load_service
from app.settings import Settings
from model.chat_template import INFO_KEY, play_template
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import running_server

KEY = "chat-key"
MODEL = "play"
TALK = [
    {"role": "system", "content": "A street in Verona."},
    {"role": "user", "content": "Good morrow, cousin."},
]
SAMPLING = {"seed": 7, "max_tokens": 40, "temperature": 0.9}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelService]:
    vocab = Vocabulary.from_text(string.ascii_letters + " .,;:!?'\n")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=2))
    path = tmp_path_factory.mktemp("chat-clients") / f"{MODEL}.safetensors"
    info = {INFO_KEY: play_template().to_json()}
    save_checkpoint(Checkpoint.from_model(model, vocab, info=info), path)
    loaded = load_service(settings_for(path))
    yield loaded
    loaded.stop()


def settings_for(path: Path) -> Settings:
    return Settings(
        checkpoint=path,
        device="cpu",
        max_length=300,
        max_prime_length=500,
        default_length=40,
        api_key=SecretStr(KEY),
        access_log=False,
        shutdown_grace_seconds=2,
    )


@pytest.fixture(scope="module")
def base_url(service: ModelService) -> Iterator[str]:
    settings = settings_for(service.registry.files[MODEL].path)
    with running_server(create_app(settings, service)) as url:
        yield f"{url}/v1"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=20)


def completion_text(client: openai.OpenAI, talk: list[dict[str, str]], **fields: Any) -> str:
    """/v1/completions of the conversation as the model's template writes it."""
    prompt = play_template().render(talk, 500)
    completion = client.completions.create(model=MODEL, prompt=prompt, stop=["\n\n"], **fields)
    return completion.choices[0].text


def test_openai_sdk_chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=TALK, n=2, **SAMPLING)
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.system_fingerprint is not None and reply.system_fingerprint.startswith("fp_")
    assert [choice.index for choice in reply.choices] == [0, 1]
    texts = [choice.message.content for choice in reply.choices]
    assert all(choice.message.role == "assistant" for choice in reply.choices)
    assert {choice.finish_reason for choice in reply.choices} <= {"stop", "length"}
    assert texts[0] == completion_text(client, TALK, **SAMPLING)
    assert texts[1] == completion_text(client, TALK, **{**SAMPLING, "seed": 8})
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(len(text or "") for text in texts)


def test_openai_sdk_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=TALK, **SAMPLING)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=TALK,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLING,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage


def test_openai_sdk_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=TALK, logprobs=True, top_logprobs=3, **SAMPLING
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode()) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob


def test_openai_sdk_extensions_and_errors(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(
        model=MODEL, messages=TALK, max_tokens=20, extra_body={"top_k": 1}, seed=1
    )
    again = client.chat.completions.create(
        model=MODEL, messages=TALK, max_tokens=20, extra_body={"top_k": 1}, seed=2
    )
    assert greedy.choices[0].message.content == again.choices[0].message.content
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=TALK, tools=[tool])  # type: ignore[list-item]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=TALK)


def test_langchain_chat_openai(client: openai.OpenAI, base_url: str) -> None:
    import langchain_openai as chat_models  # a dev dependency: missing is a failure

    llm = chat_models.ChatOpenAI(
        model=MODEL, base_url=base_url, api_key=KEY, max_retries=0, timeout=20, **SAMPLING
    )
    conversation = [("system", TALK[0]["content"]), ("human", TALK[1]["content"])]
    message = llm.invoke(conversation)
    expected = client.chat.completions.create(model=MODEL, messages=TALK, **SAMPLING)
    assert message.content == expected.choices[0].message.content
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == len(message.content)
    streamed = "".join(str(chunk.content) for chunk in llm.stream(conversation))
    assert streamed == message.content


def run_llm(user_dir: Path, *args: str) -> str:
    """The `llm` command line, its settings in `user_dir`; its stdout."""
    env = {**os.environ, "LLM_USER_PATH": str(user_dir)}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "llm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_llm_command_line(client: openai.OpenAI, base_url: str, tmp_path: Path) -> None:
    import llm  # noqa: F401  # a dev dependency: missing is a failure

    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: verona\n  model_name: {MODEL}\n  api_base: {base_url}\n"
        "  api_key_name: verona\n"
    )
    (tmp_path / "keys.json").write_text(json.dumps({"verona": KEY}))
    options = ["-o", "seed", "7", "-o", "max_tokens", "40", "-o", "temperature", "0.9"]
    first = run_llm(
        tmp_path, "-m", "verona", "-s", TALK[0]["content"], TALK[1]["content"], *options
    )
    expected = client.chat.completions.create(model=MODEL, messages=TALK, **SAMPLING)
    reply = expected.choices[0].message.content or ""
    assert first == reply + "\n"
    # -c continues the conversation: the earlier turns travel with the new message
    second = run_llm(tmp_path, "-c", "Whither away?", *options)
    talk = [
        *TALK,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "Whither away?"},
    ]
    assert second == completion_text(client, talk, **SAMPLING) + "\n"


def test_openai_sdk_chat_continued_from_states(client: openai.OpenAI) -> None:
    """Each turn sends the whole conversation and, in extra_body, the state the last reply
    returned: the replies are those of the whole conversation, turn after turn."""
    talk = list(TALK)
    state = None
    lines = ["And what of Tybalt?", "Then let us go.", "Farewell."]
    for turn, line in enumerate(lines):
        fields: dict[str, Any] = {**SAMPLING, "seed": turn, "extra_body": {"return_state": True}}
        whole = client.chat.completions.create(model=MODEL, messages=talk, **fields)
        reply = whole.choices[0]
        if state is not None:
            fields["extra_body"] |= {"state": state}
            continued = client.chat.completions.create(model=MODEL, messages=talk, **fields)
            assert continued.choices[0].message.content == reply.message.content
            assert continued.choices[0].model_extra["state"] == reply.model_extra["state"]
            stream = client.chat.completions.create(
                model=MODEL, messages=talk, stream=True, **fields
            )
            chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
            assert "".join(c.delta.content or "" for c in chunks) == reply.message.content
            assert chunks[-1].model_extra["state"] == reply.model_extra["state"]
        state = reply.model_extra["state"]
        content = reply.message.content or ""
        talk += [{"role": "assistant", "content": content}, {"role": "user", "content": line}]
