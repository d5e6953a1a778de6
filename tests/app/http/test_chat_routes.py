"""POST /v1/chat/completions through HTTP (app/http/chat.py): OpenAI's shapes, the
model's chat template, seeds shared with /v1/completions, and every refusal a 400
naming its field."""

from __future__ import annotations

import json
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.engine.service import ModelService
from app.gate.quota import ENGINE_PATHS
from app.http import chat as chat_module
from app.http import sse
from app.http.chat_schemas import MAX_MESSAGES
from app.main import create_app, load_service
from app.settings import Settings
from model.chat_template import INFO_KEY, PLAIN, ChatTemplate, play_template
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import serve_asgi

pytestmark = pytest.mark.anyio

CORPUS = string.ascii_letters + " .,;:!?'\n"
MAX_PRIME = 200
TEMPLATES = {
    "play": play_template().to_json(),
    "plain": None,
    "broken": {"template": "{% for m in messages %}", "stop": []},
    "refuses": {"template": "{{ raise_exception('start with a user message') }}", "stop": []},
    "hostile": {"template": "{{ 'x' * 10**9 }}", "stop": []},
    "damaged": {"template": 42},
}
HELLO = [{"role": "user", "content": "Good morrow"}]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelService]:
    """One untrained 2×16 LSTM under several names, each with its own chat template."""
    models = tmp_path_factory.mktemp("chat-models")
    vocab = Vocabulary.from_text(CORPUS)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=2))
    for name, template in TEMPLATES.items():
        info = {"corpus": "tiny"} if template is None else {INFO_KEY: template}
        save_checkpoint(
            Checkpoint.from_model(model, vocab, info=info), models / f"{name}.safetensors"
        )
    loaded = load_service(settings_for(models))
    yield loaded
    loaded.stop()


def settings_for(models: Path) -> Settings:
    return Settings(
        checkpoint=None,
        models_dir=models,
        default_model="play",
        device="cpu",
        max_length=300,
        max_prime_length=MAX_PRIME,
        default_length=40,
        max_loaded_models=len(TEMPLATES),
        shutdown_grace_seconds=2,
        quota_refusal_delay_seconds=0,
    )


@pytest.fixture
async def client(service: ModelService) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(service.registry.files["play"].path.parent)
    async with serve_asgi(create_app(settings, service)) as http:
        yield http


async def chat(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"model": "play", "messages": HELLO, **fields}
    return await client.post("/v1/chat/completions", json=body)


def data_lines(text: str) -> list[Any]:
    lines = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def newline_bias(service: ModelService) -> dict[str, float]:
    """logit_bias that makes every character a newline (the model writes "\\n\\n" at once)."""
    return {str(service.model("play").vocab.chars.index("\n")): 100}


async def test_rendering_holds_one_of_the_clients_places(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template's render is the client's work: with a quota of one, the render holds
    the place (a second request of that client meanwhile would be refused), gives it back
    before the reply claims it, and another client is served alike."""
    ledger = service.engine.clients
    monkeypatch.setattr(ledger, "limit", 1)
    during: list[bool] = []
    real = chat_module.render

    def render(*args: Any) -> Any:
        during.append(ledger.full("10.0.0.7"))
        return real(*args)

    monkeypatch.setattr(chat_module, "render", render)
    for who in ("10.0.0.7", "10.0.0.8"):
        body = {"model": "play", "messages": HELLO, "max_completion_tokens": 5}
        reply = await client.post(
            "/v1/chat/completions", json=body, headers={"X-Forwarded-For": who}
        )
        assert reply.status_code == 200, reply.text
    assert during == [True, False]  # the first client's own render held its place
    assert not ledger.full("10.0.0.7") and not ledger.full("10.0.0.8")


async def test_reply_shape_and_usage(client: httpx.AsyncClient) -> None:
    response = await chat(client, max_tokens=30, seed=3, stop=[])
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "play" and body["system_fingerprint"].startswith("fp_")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) == 30
    assert choice["finish_reason"] == "length"
    prompt = play_template().render(HELLO, MAX_PRIME)
    assert body["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 30,
        "total_tokens": len(prompt) + 30,
    }


async def test_a_reply_is_the_completion_of_the_rendered_conversation(
    client: httpx.AsyncClient,
) -> None:
    """Same seed, same text; choice i has seed + i, as /v1/completions and /generate."""
    talk = [
        {"role": "system", "content": "A street."},
        {"role": "user", "content": "Good morrow"},
        {"role": "assistant", "content": "And to you"},
        {"role": "user", "content": "Whither?", "name": "TYBALT"},
    ]
    fields = {"max_tokens": 40, "seed": 11, "n": 2, "temperature": 0.9, "stop": ["q"]}
    replies = (await chat(client, messages=talk, **fields)).json()["choices"]
    again = (await chat(client, messages=talk, **fields)).json()["choices"]
    assert [c["message"] for c in replies] == [c["message"] for c in again]
    prompt = play_template().render(talk, MAX_PRIME)
    assert prompt.endswith("TYBALT:\nWhither?\n\nJULIET:\n")
    completion = await client.post(
        "/v1/completions", json={"model": "play", "prompt": prompt, **fields}
    )
    texts = [c["text"] for c in completion.json()["choices"]]
    assert [c["message"]["content"] for c in replies] == texts and texts[0] != texts[1]


async def test_a_model_without_a_template_gets_the_plain_one(client: httpx.AsyncClient) -> None:
    reply = (await chat(client, model="plain", max_tokens=20, seed=5, stop=[])).json()
    prompt = PLAIN.render(HELLO, MAX_PRIME)
    assert prompt == "user: Good morrow\n\nassistant: "
    assert reply["usage"]["prompt_tokens"] == len(prompt)
    completion = await client.post(
        "/v1/completions",
        json={"model": "plain", "prompt": prompt, "max_tokens": 20, "seed": 5},
    )
    assert reply["choices"][0]["message"]["content"] == completion.json()["choices"][0]["text"]


async def test_the_templates_stop_applies_unless_the_request_gives_one(
    client: httpx.AsyncClient, service: ModelService
) -> None:
    bias = newline_bias(service)
    default = (await chat(client, max_tokens=10, logit_bias=bias)).json()["choices"][0]
    assert (default["message"]["content"], default["finish_reason"]) == ("", "stop")
    for stop in ([], ["a"]):
        given = (await chat(client, max_tokens=10, logit_bias=bias, stop=stop)).json()
        choice = given["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == ("\n" * 10, "length")


async def test_a_complete_regex_match_ends_as_stop(client: httpx.AsyncClient) -> None:
    body = (await chat(client, max_tokens=20, regex="[a-z]{3}", seed=2)).json()
    choice = body["choices"][0]
    assert len(choice["message"]["content"]) == 3 and choice["finish_reason"] == "stop"


async def test_logprobs_in_chats_shape(client: httpx.AsyncClient) -> None:
    fields = {"max_tokens": 12, "seed": 4, "stop": []}
    body = (await chat(client, logprobs=True, top_logprobs=2, **fields)).json()
    [choice] = body["choices"]
    content = choice["logprobs"]["content"]
    text = choice["message"]["content"]
    assert [entry["token"] for entry in content] == list(text)
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode()) and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 2
        top = entry["top_logprobs"][0]
        assert set(top) == {"token", "logprob", "bytes"} and top["logprob"] >= entry["logprob"]
    prompt = play_template().render(HELLO, MAX_PRIME)
    legacy = await client.post(
        "/v1/completions", json={"model": "play", "prompt": prompt, "logprobs": 2, **fields}
    )
    columns = legacy.json()["choices"][0]["logprobs"]
    assert [entry["logprob"] for entry in content] == columns["token_logprobs"]
    bare = (await chat(client, logprobs=True, **fields)).json()["choices"][0]["logprobs"]
    assert all(entry["top_logprobs"] == [] for entry in bare["content"])


async def test_stream_opens_each_choice_with_its_role(client: httpx.AsyncClient) -> None:
    fields = {"max_tokens": 25, "seed": 9, "n": 2, "stop": [], "logprobs": True}
    whole = (await chat(client, **fields)).json()
    response = await chat(client, stream=True, stream_options={"include_usage": True}, **fields)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = data_lines(response.text)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    for index, choice in enumerate(whole["choices"]):
        mine = [
            c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index
        ]
        text = "".join(piece["delta"].get("content", "") for piece in mine)
        assert text == choice["message"]["content"]
        tokens = [
            e["token"] for piece in mine if piece["logprobs"] for e in piece["logprobs"]["content"]
        ]
        assert "".join(tokens) == text
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        assert all(piece["finish_reason"] is None for piece in mine[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    plain = await chat(client, stream=True, max_tokens=5)
    assert all(c["usage"] is None for c in data_lines(plain.text))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_silent_stream_sends_pings(
    client: httpx.AsyncClient,
    service: ModelService,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """Decoding steps 0.1 s apart, a keep-alive after 0.02 s: the gaps carry `: ping`."""
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.02)
    decoder = service.model("play").lane.decoder
    step = decoder.step

    def slow_step(*args: Any) -> Any:
        time.sleep(0.1)
        return step(*args)

    monkeypatch.setattr(decoder, "step", slow_step)
    body = {"model": "play", "max_tokens": 3, "stream": True, "seed": 1, "stop": []}
    body |= {"messages": HELLO} if "chat" in path else {"prompt": "Hi"}
    response = await client.post(path, json=body)
    assert response.status_code == 200
    assert sse.KEEPALIVE in response.text
    assert data_lines(response.text)  # the pings sit between ordinary chunks


async def test_neutral_values_clients_send_are_accepted(client: httpx.AsyncClient) -> None:
    talk = [
        {"role": "developer", "content": "A street."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        },
        {"role": "assistant", "content": "Ay", "tool_calls": [], "refusal": None},
        {"role": "user", "content": "Well?"},
    ]
    fields = {
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "modalities": ["text"],
        "store": False,
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "user": "someone",
        "max_completion_tokens": 7,
        "max_tokens": 7,
        "stop": [],
    }
    response = await chat(client, messages=talk, **fields)
    assert response.status_code == 200, response.text
    prompt = play_template().render(
        [
            {"role": "system", "content": "A street."},
            {"role": "user", "content": "One\nTwo"},
            {"role": "assistant", "content": "Ay"},
            {"role": "user", "content": "Well?"},
        ],
        MAX_PRIME,
    )
    assert response.json()["usage"]["prompt_tokens"] == len(prompt)
    assert len(response.json()["choices"][0]["message"]["content"]) == 7


async def test_the_native_sampler_settings_are_extra_fields(client: httpx.AsyncClient) -> None:
    fields = {"top_k": 1, "min_p": 0.2, "repetition_penalty": 1.3, "seed": 1, "max_tokens": 15}
    first = (await chat(client, **fields)).json()["choices"][0]["message"]["content"]
    greedy = (await chat(client, **fields, temperature=0)).json()["choices"][0]
    assert first == greedy["message"]["content"]  # top_k 1 is greedy whatever the seed


@pytest.mark.parametrize(
    "fields, param, words",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "call tools"),
        ({"tools": []}, "tools", "call tools"),
        ({"tool_choice": "auto"}, "tool_choice", "call tools"),
        ({"functions": [{"name": "f"}]}, "functions", "call tools"),
        ({"response_format": {"type": "json_object"}}, "response_format", "regex"),
        ({"modalities": ["text", "audio"]}, "modalities", "text only"),
        ({"audio": {"voice": "alloy"}}, "audio", "text only"),
        ({"store": True}, "store", "not stored"),
        ({"best_of": 2}, "best_of", "Extra inputs"),
        ({"prompt": "x"}, "prompt", "Extra inputs"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": "hello"}, "messages", "valid list"),
        ({"messages": HELLO * (MAX_MESSAGES + 1)}, "messages", "at most 1024"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0", "tool messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "Input should"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content.str", "string"),
        ({"messages": [{"role": "user"}]}, "messages.0", "needs content"),
        (
            {"messages": [{"role": "user", "content": "x", "name": "N" * 65}]},
            "messages.0.name",
            "64",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0",
            "'image_url': this model reads and writes text only",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages.0",
            "text only",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
            "messages.0",
            "tool_calls is not supported",
        ),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages.0.extra", "Extra"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"n": 17}, "n", "less than or equal to 16"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
        ({"max_completion_tokens": 10**6}, "max_tokens", "less than or equal to 300"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, None, "differ"),
        ({"top_logprobs": 2}, None, "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 6}, "top_logprobs", "less than or equal to 5"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"stop": ["x"] * 5}, "stop", "at most 4"),
        ({"logit_bias": {"0": 101}}, "logit_bias.0", "less than or equal to 100"),
        ({"logit_bias": {"999": 5}}, "logit_bias", None),
        ({"regex": "("}, "regex", None),
        ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage", None),
    ],
)
async def test_refusals_are_400_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str | None, words: str | None
) -> None:
    response = await chat(client, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words is None or words in error["message"], error["message"]


async def test_nan_and_infinite_numbers_are_refused(client: httpx.AsyncClient) -> None:
    for raw in ("NaN", "Infinity", "1e400"):
        content = '{"model": "play", "messages": [{"role": "user", "content": "x"}], '
        content += f'"temperature": {raw}}}'
        response = await client.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature"


async def test_characters_the_model_does_not_know(client: httpx.AsyncClient) -> None:
    talk = [{"role": "user", "content": "héllo ☃"}]
    response = await chat(client, messages=talk)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "messages_out_of_vocabulary")
    assert "é" in error["message"] and "☃" in error["message"]
    skipped = await chat(client, messages=talk, skip_unknown=True, max_tokens=3)
    assert skipped.status_code == 200
    assert skipped.json()["usage"]["prompt_tokens"] == len(play_template().render(HELLO, 99)) - 6


async def test_a_conversation_past_max_prime_length(client: httpx.AsyncClient) -> None:
    long = [{"role": "user", "content": "a" * MAX_PRIME}]
    for talk in (long, HELLO * 30, [{"role": "user", "content": "a" * 60_000}]):
        response = await chat(client, messages=talk)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("messages", "string_too_long")
        assert f"longer than {MAX_PRIME}" in error["message"]
    huge = [{"role": "user", "content": "a" * 2_000_000}]  # past MAX_BODY_BYTES: not read
    assert (await chat(client, messages=huge)).status_code == 413


@pytest.mark.parametrize(
    "model, words",
    [
        ("broken", "does not compile: line 1"),
        ("refuses", "refused the messages: start with a user message"),
        ("hostile", "could make"),
        ("damaged", "must be a non-empty string"),
    ],
)
async def test_a_template_that_fails_is_a_400_naming_it(
    client: httpx.AsyncClient, model: str, words: str
) -> None:
    response = await chat(client, model=model)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "chat_template_error")
    assert f"model '{model}'" in error["message"] and "chat template" in error["message"]
    assert words in error["message"]
    fine = await client.post("/v1/completions", json={"model": model, "prompt": "a"})
    assert fine.status_code == 200  # the model still completes text


async def test_unknown_model_and_key(client: httpx.AsyncClient, service: ModelService) -> None:
    missing = await chat(client, model="gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    from pydantic import SecretStr

    settings = settings_for(service.registry.files["play"].path.parent)
    keyed = settings.model_copy(update={"api_key": SecretStr("k")})
    async with serve_asgi(create_app(keyed, service)) as http:
        refused = await http.post("/v1/chat/completions", json={"model": "play", "messages": HELLO})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_the_fingerprint_follows_the_model(client: httpx.AsyncClient) -> None:
    play = (await chat(client, max_tokens=1)).json()["system_fingerprint"]
    plain = (await chat(client, model="plain", max_tokens=1)).json()["system_fingerprint"]
    completion = await client.post("/v1/completions", json={"model": "play", "max_tokens": 1})
    assert completion.json()["system_fingerprint"] == play != plain


async def test_get_model_shows_the_chat_template(client: httpx.AsyncClient) -> None:
    play = (await client.get("/model/play")).json()["chat_template"]
    assert play == {
        "template": play_template().template,
        "stop": ["\n\n"],
        "source": "checkpoint",
        "problem": None,
    }
    plain = (await client.get("/model/plain")).json()["chat_template"]
    assert (plain["template"], plain["source"]) == (PLAIN.template, "default")
    damaged = (await client.get("/model/damaged")).json()["chat_template"]
    assert "must be" in damaged["problem"]
    assert ChatTemplate.from_json({"template": play["template"], "stop": play["stop"]})


def test_chat_is_an_engine_route_for_the_quota() -> None:
    assert "/v1/chat/completions" in ENGINE_PATHS


async def test_a_stream_that_fails_ends_with_an_error_chunk(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = service.model("play").lane.decoder

    def failing_step(*args: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoder, "step", failing_step)
    response = await chat(client, stream=True, max_tokens=20)
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    last = json.loads(lines[-1][len("data: ") :])
    assert last["error"]["type"] == "server_error" and "[DONE]" not in response.text
    whole = await chat(client, max_tokens=20)
    assert whole.status_code == 500 and whole.json()["error"]["code"] == "generation_failed"


async def test_the_openapi_document_describes_chat(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert "200" in operation["responses"] and "ChatCompletion" in json.dumps(operation)
