"""Recurrent states through the HTTP API (model/state.py): a request that continues a text
from its `state` gives what the whole text as prime gives, turn after turn, over the native
routes (JSON and both streams) and the OpenAI routes, forked n ways, on another service
loaded from the same checkpoint; and a state is checked before use, never touching another
request."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import torch

from app.engine.service import ModelService
from app.http.chat import render
from app.http.chat_schemas import ChatCompletionRequest
from app.main import create_app, load_service
from app.settings import Settings
from model.config import ModelConfig
from model.network import CharRNN
from model.state import HEADER, StateCodec
from model.vocab import Vocabulary
from tests.app.support import serve_asgi

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]
Widen = Callable[[], None]

# A story's turns after its opening: (the new text, the request's settings, how it is sent).
TURNS: list[tuple[str, dict[str, Any], str]] = [
    (
        " and then",
        {
            "length": 60,
            "repetition_penalty": 1.5,
            "repeat_last_n": 2048,
            "logprobs": 2,
            "prompt_logprobs": True,
        },
        "json",
    ),
    (
        "",
        {"length": 30, "stop": ["a"], "temperature": 0.8, "top_k": 6, "logit_bias": {"a": 3}},
        "post",
    ),
    ("be", {"length": 0}, "json"),
    (
        "",
        {"length": 25, "frequency_penalty": 0.7, "presence_penalty": 0.4, "regex": "[a-h ]+"},
        "get",
    ),
    ("go ", {"length": 50, "top_p": 0.9, "min_p": 0.05, "logprobs": 0}, "json"),
    (" q", {"length": 40, "temperature": 1.3}, "post"),
]


@pytest.fixture
def widen(service: ModelService, monkeypatch: pytest.MonkeyPatch) -> Widen:
    """`widen()`: from then on the service takes a whole story as one prime (what a state
    is compared with), until the test ends."""

    def apply() -> None:
        wide = service.limits.model_copy(update={"max_prime_length": 100_000})
        monkeypatch.setattr(service, "limits", wide)

    return apply


async def generate(client: httpx.AsyncClient, how: str, sse: Parse, **body: Any) -> dict[str, Any]:
    """A generation's response as /generate's JSON, sent as `how` says: json (POST
    /generate), post or get (the streams: the chars joined, with the done event)."""
    if how == "json":
        response = await client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()
    if how == "post":
        response = await client.post("/generate/stream", json=body)
    else:
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in body.items()}
        response = await client.get("/generate/stream", params=query)
    assert response.status_code == 200, response.text
    events = sse(response.text)
    assert events[-1][0] == "done", events[-1]
    return {"text": "".join(data for name, data in events if name == "chars"), **events[-1][1]}


def written(turn: dict[str, Any], stop: list[str]) -> str:
    """What the model wrote in a turn: the text, and the stop string that ended it (one
    stop string per request here, so the one that matched is known)."""
    return turn["text"] + (stop[0] if turn["finish_reason"] == "stop" else "")


async def test_turns_from_states_equal_the_whole_story_as_prime(
    client: httpx.AsyncClient, widen: Widen, sse: Parse
) -> None:
    widen()
    story = "the cat sat on the mat"
    first = await generate(client, "json", sse, prime=story, length=40, seed=1, return_state=True)
    story += first["text"]
    state = first["state"]
    ignored_differs = False
    endings = set()
    for n, (new, settings, how) in enumerate(TURNS):
        seed = 100 + n
        ours = await generate(
            client, how, sse, state=state, prime=new, seed=seed, return_state=True, **settings
        )
        whole = await generate(
            client, "json", sse, prime=story + new, seed=seed, return_state=True, **settings
        )
        assert ours["text"] == whole["text"]
        assert ours["finish_reason"] == whole["finish_reason"]
        assert ours.get("regex_complete") == whole.get("regex_complete")
        assert ours["state"] == whole["state"]  # the same bytes
        if how == "json":
            assert ours["logprobs"] == whole["logprobs"]
            assert ours["prime"] == new
        if settings.get("prompt_logprobs"):
            # Ours are the new text's; the whole prime's last len(new) are the same.
            mine, theirs = ours["prompt_logprobs"], whole["prompt_logprobs"]
            assert mine == {key: value[-len(new) :] for key, value in theirs.items()}
        assert ours["stats"]["prime_chars"] == len(new)  # the history is not read again
        # A server that ignored the state would write something else.
        fresh = await generate(client, "json", sse, prime=new or "\n", seed=seed, **settings)
        ignored_differs |= fresh["text"] != ours["text"]
        endings.add(ours["finish_reason"])
        story += new + written(ours, settings.get("stop", []))
        state = ours["state"]
    assert ignored_differs
    assert endings == {"length", "stop", "regex"}  # a state after a stop string continues
    assert len(story) > 200  # past the MAX_PRIME_LENGTH of the served settings


async def test_a_story_longer_than_max_prime_length_continues(
    client: httpx.AsyncClient, widen: Widen, settings: Settings
) -> None:
    """The history is in the state: MAX_PRIME_LENGTH counts the new text only."""
    body = {"prime": "x" * settings.max_prime_length, "length": 200, "seed": 4}
    response = await client.post("/generate", json={**body, "return_state": True})
    assert response.status_code == 200, response.text
    turn = response.json()
    story = body["prime"] + turn["text"]
    assert len(story) > settings.max_prime_length
    again = await client.post(
        "/generate", json={"state": turn["state"], "prime": "ab", "length": 20, "seed": 5}
    )
    assert again.status_code == 200, again.text
    too_long = "y" * (settings.max_prime_length + 1)
    refused = await client.post("/generate", json={"state": turn["state"], "prime": too_long})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "prime"]
    widen()
    whole = await client.post("/generate", json={"prime": story + "ab", "length": 20, "seed": 5})
    assert again.json()["text"] == whole.json()["text"]


async def test_the_new_text_is_read_as_a_prime_is(client: httpx.AsyncClient, widen: Widen) -> None:
    """Newlines are normalised and unknown characters refused or skipped, as for a prime."""
    widen()
    first = await client.post("/generate", json={"prime": "ab", "length": 9, "return_state": True})
    state, story = first.json()["state"], "ab" + first.json()["text"]
    base = {"state": state, "length": 20, "seed": 6}
    crlf = await client.post("/generate", json={**base, "prime": "a\r\nb"})
    whole = await client.post("/generate", json={"prime": story + "a\nb", "length": 20, "seed": 6})
    assert crlf.json()["text"] == whole.json()["text"]
    assert crlf.json()["prime"] == "a\nb"
    unknown = await client.post("/generate", json={**base, "prime": "a€b"})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "prime"]
    skipped = await client.post("/generate", json={**base, "prime": "a€b", "skip_unknown": True})
    plain = await client.post("/generate", json={**base, "prime": "ab"})
    assert skipped.json()["text"] == plain.json()["text"]


async def test_the_state_is_returned_only_when_asked(client: httpx.AsyncClient, sse: Parse) -> None:
    body = {"prime": "ab", "length": 10, "seed": 1}
    plain = (await client.post("/generate", json=body)).json()
    assert plain["state"] is None
    events = sse((await client.post("/generate/stream", json=body)).text)
    assert "state" not in events[-1][1]
    asked = (await client.post("/generate", json={**body, "return_state": True})).json()
    assert asked["text"] == plain["text"] and isinstance(asked["state"], str)


async def test_only_requests_that_ask_read_their_final_state(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the state costs a step of the row: only return_state requests take it."""
    decoder = service.model().lane.decoder
    taken: list[int] = []
    final_state = decoder.final_state

    def counted(row: int, output: Any) -> Any:
        taken.append(row)
        return final_state(row, output)

    monkeypatch.setattr(decoder, "final_state", counted)
    await client.post("/generate", json={"prime": "ab", "length": 10})
    assert taken == []
    await client.post("/generate", json={"prime": "ab", "length": 10, "return_state": True})
    assert len(taken) == 1


async def test_a_final_state_that_cannot_be_read_fails_its_request_alone(
    client: httpx.AsyncClient, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = service.model().lane.decoder

    def broken(row: int, output: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoder, "final_state", broken)
    body = {"prime": "ab", "length": 10, "seed": 1}
    failed = await client.post("/generate", json={**body, "return_state": True})
    assert failed.status_code == 500
    assert "out of memory" not in failed.text  # the log has the detail, not the client
    assert (await client.post("/generate", json=body)).status_code == 200
    assert decoder.free == decoder.capacity


async def test_a_state_continues_on_another_service_of_the_same_checkpoint(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Nothing of a conversation stays on the server: a service loaded afresh from the
    checkpoint (another replica) continues a state as the one that made it."""
    first = await client.post(
        "/generate", json={"prime": "abc", "length": 50, "return_state": True}
    )
    body = {"state": first.json()["state"], "prime": " d", "length": 40, "seed": 8}
    here = await client.post("/generate", json={**body, "return_state": True})
    other = load_service(settings)
    try:
        async with serve_asgi(create_app(settings, other)) as replica:
            there = await replica.post("/generate", json={**body, "return_state": True})
    finally:
        other.stop()
    assert there.status_code == 200, there.text
    assert there.json()["text"] == here.json()["text"]
    assert there.json()["state"] == here.json()["state"]


async def test_n_completions_fork_a_state_as_the_whole_text_would(
    client: httpx.AsyncClient, widen: Widen, sse: Parse
) -> None:
    """/v1/completions: each of n choices from one state is the native whole-text
    generation with its seed (seed + i), state included, streamed or not."""
    widen()
    first = await client.post("/generate", json={"prime": "the cat", "length": 40, "seed": 2})
    story = "the cat" + first.json()["text"]
    start = await client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": story, "max_tokens": 0, "return_state": True},
    )
    state = start.json()["choices"][0]["state"]
    body = {"model": "tiny", "prompt": " then", "max_tokens": 30, "n": 3, "seed": 10}
    body |= {"state": state, "return_state": True, "repetition_penalty": 1.3}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert response.json()["usage"]["prompt_tokens"] == len(" then")  # not the history
    for index, choice in enumerate(choices):
        whole = await client.post(
            "/generate",
            json={
                "prime": story + " then",
                "length": 30,
                "seed": 10 + index,
                "repetition_penalty": 1.3,
                "temperature": 1.0,
                "return_state": True,
            },
        )
        assert choice["text"] == whole.json()["text"]
        assert choice["state"] == whole.json()["state"]
    assert len({choice["text"] for choice in choices}) == 3  # forks, not copies
    streamed = await client.post("/v1/completions", json={**body, "stream": True})
    chunks = [data for _, data in sse(streamed.text.replace("data: [DONE]\n\n", ""))]
    pieces = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    ends = {piece["index"]: piece for piece in pieces if piece["finish_reason"]}
    for index, choice in enumerate(choices):
        assert ends[index]["finish_reason"] == choice["finish_reason"]
        assert ends[index]["state"] == choice["state"]
    assert all("state" not in piece for piece in pieces if not piece["finish_reason"])
    plain = await client.post("/v1/completions", json={**body, "return_state": False})
    assert all("state" not in choice for choice in plain.json()["choices"])


async def test_an_echo_after_a_state_has_every_logprob(client: httpx.AsyncClient) -> None:
    first = await client.post("/generate", json={"prime": "ab", "length": 9, "return_state": True})
    body = {"model": "tiny", "prompt": "cd", "max_tokens": 0, "echo": True, "logprobs": 1}
    echoed = await client.post("/v1/completions", json={**body, "state": first.json()["state"]})
    choice = echoed.json()["choices"][0]
    assert choice["text"] == "cd"
    assert None not in choice["logprobs"]["token_logprobs"]
    alone = await client.post("/v1/completions", json=body)
    assert alone.json()["choices"][0]["logprobs"]["token_logprobs"][0] is None


async def test_a_chat_reply_returns_the_state_of_its_conversation(
    client: httpx.AsyncClient, widen: Widen, service: ModelService
) -> None:
    widen()
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_completion_tokens": 20,
        "seed": 3,
        "stop": [],
        "return_state": True,
    }
    chat = await client.post("/v1/chat/completions", json=body)
    assert chat.status_code == 200, chat.text
    choice = chat.json()["choices"][0]
    prompt, _ = render(service.model(), ChatCompletionRequest(**body), 100_000)
    whole = await client.post(
        "/generate",
        json={"prime": prompt, "length": 20, "seed": 3, "temperature": 1, "return_state": True},
    )
    assert choice["message"]["content"] == whole.json()["text"]
    assert choice["state"] == whole.json()["state"]
    # The conversation without the reply is shorter than the state's text.
    refused = await client.post("/v1/chat/completions", json={**body, "state": choice["state"]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "state"


async def chat(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()


# The template's own stop (a blank line) and a shorter one it also writes after a reply.
@pytest.mark.parametrize("stop", [None, ["\n"]], ids=["template-stop", "shorter-stop"])
async def test_a_chat_continued_from_its_last_replys_state_equals_it_sent_whole(
    client: httpx.AsyncClient, widen: Widen, service: ModelService, stop: list[str] | None
) -> None:
    widen()
    newline = service.model().vocab.encode("\n")[0]
    bias = {str(newline): 3} if stop else None  # replies that end at the stop now and then
    messages: list[dict[str, str]] = [{"role": "user", "content": "hello there"}]
    state = None
    reasons = set()
    for turn, words in enumerate(["good day", "and so on", "fare well", "at last"]):
        body = {"messages": messages, "seed": turn, "stop": stop, "logit_bias": bias}
        body |= {"return_state": True}
        body |= {"max_completion_tokens": 15}
        whole = await chat(client, **body)
        reply = whole["choices"][0]
        if state is not None:
            continued = await chat(client, **body, state=state)
            after = continued["choices"][0]
            assert after["message"]["content"] == reply["message"]["content"]
            assert after["state"] == reply["state"]  # bit for bit, as if read whole
            read, read_whole = (r["usage"]["prompt_tokens"] for r in (continued, whole))
            assert read < read_whole  # only the new messages were read
            reply = after
        state = reply["state"]
        reasons.add(reply["finish_reason"])
        messages = [
            *messages,
            {"role": "assistant", "content": reply["message"]["content"]},
            {"role": "user", "content": words},
        ]
    assert ("stop" in reasons) if stop else reasons == {"length"}  # what each case tests


async def test_a_chat_with_states_grows_past_max_prime_length(
    client: httpx.AsyncClient, service: ModelService
) -> None:
    limit = service.limits.max_prime_length  # 50 in these tests
    messages = [{"role": "user", "content": "hi"}]
    body = {"max_completion_tokens": 10, "seed": 1, "return_state": True}
    state: dict[str, str] = {}
    for _ in range(6):  # the whole conversation soon passes `limit`
        answer = await chat(client, messages=messages, **body, **state)
        state = {"state": answer["choices"][0]["state"]}
        messages = [
            *messages,
            {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
            {"role": "user", "content": "and then"},
        ]
    assert len(render_messages(service, messages)) > limit
    whole = await client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages, **body}
    )
    assert whole.status_code == 400 and whole.json()["error"]["param"] == "messages"


def render_messages(service: ModelService, messages: list[dict[str, str]]) -> str:
    request = ChatCompletionRequest(model="tiny", messages=messages)
    return render(service.model(), request, 100_000)[0]


async def test_a_state_from_another_conversation_is_refused(
    client: httpx.AsyncClient, widen: Widen
) -> None:
    widen()
    first = [{"role": "user", "content": "hello there"}]
    body = {"max_completion_tokens": 12, "seed": 2, "return_state": True}
    answer = await chat(client, messages=first, **body)
    reply = {"role": "assistant", "content": answer["choices"][0]["message"]["content"]}
    state = answer["choices"][0]["state"]
    then = {"role": "user", "content": "and then"}
    assert (await chat(client, messages=[*first, reply, then], **body, state=state))["choices"]
    for changed in (
        [{"role": "user", "content": "hello where"}, reply, then],  # an earlier message
        [*first, {**reply, "content": "x" + reply["content"][1:]}, then],  # the reply
        [*first, {**reply, "content": reply["content"][:-1]}, then],  # shorter
    ):
        refused = await client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": changed, **body, "state": state},
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "state" and "does not begin with" in error["message"]
    garbage = await client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": [*first, reply, then], "state": "AAAA"},
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "state"


async def test_score_continues_a_state_and_returns_one(
    client: httpx.AsyncClient, widen: Widen
) -> None:
    story, more = "To be, or not to be: that is", " the question."
    widen()
    generated = await client.post(
        "/generate", json={"prime": story, "length": 0, "return_state": True}
    )
    scored = await client.post("/score", json={"text": story, "return_state": True})
    assert scored.status_code == 200, scored.text
    # A state from /score continues as one from /generate: the same bytes.
    assert scored.json()["state"] == generated.json()["state"]
    state = scored.json()["state"]
    ours = await client.post(
        "/score", json={"text": more, "state": state, "top_n": 2, "return_state": True}
    )
    whole = await client.post(
        "/score", json={"text": story + more, "top_n": 2, "return_state": True}
    )
    ours, whole = ours.json(), whole.json()
    assert ours["text"] == more and ours["chars"] == len(more)
    assert None not in ours["logprobs"]
    np.testing.assert_allclose(ours["logprobs"], whole["logprobs"][-len(more) :], atol=1e-5)
    assert ours["top_chars"] == whole["top_chars"][-len(more) :]
    assert ours["state"] == whole["state"]


async def test_one_character_after_a_state_can_be_scored(client: httpx.AsyncClient) -> None:
    first = await client.post("/score", json={"text": "ab", "return_state": True})
    state = first.json()["state"]
    one = await client.post("/score", json={"text": "c", "state": state})
    assert one.status_code == 200, one.text
    assert one.json()["chars"] == 1 and one.json()["logprobs"][0] < 0
    empty = await client.post("/score", json={"text": "", "state": state})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "text"]


# --- hostile states ----------------------------------------------------------------------


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def hostile_states(token: str, codec: StateCodec, other: StateCodec) -> dict[str, Any]:
    """Damaged forms of a good token: name → (the state, words its 422 must hold)."""
    raw = _raw(token)
    nan = raw.copy()
    nan[HEADER.size : HEADER.size + 4] = struct.pack("<f", float("nan"))
    huge = raw.copy()
    huge[HEADER.size : HEADER.size + 4] = struct.pack("<f", 3.0)  # an h no tanh makes
    version = raw.copy()
    version[0] = 99
    state = codec.decode(token)
    return {
        "garbage": ("not a state!", "URL-safe base64"),
        "empty": ("", "truncated"),
        "truncated": (_token(raw[:-5]), "bytes"),
        "padded": (_token(raw + b"\0\0\0"), "bytes"),
        "another model": (other.encode(state), "another model"),
        "nan": (_token(nan), "NaN"),
        "out of range": (_token(huge), "hidden values"),
        "version": (_token(version), "version 99"),
        "too long": ("A" * (codec.max_token_chars + 4), "at most"),
        "wrong type": (12345, "string"),
    }


@pytest.fixture
async def hostile(
    client: httpx.AsyncClient, service: ModelService, vocab: Vocabulary
) -> dict[str, Any]:
    response = await client.post(
        "/generate", json={"prime": "ab", "length": 9, "return_state": True}
    )
    torch.manual_seed(123)
    other = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=2))
    served = service.model()
    return hostile_states(
        response.json()["state"], served.state_codec, StateCodec.for_model(other, vocab)
    )


async def test_damaged_states_are_a_422_naming_state(
    client: httpx.AsyncClient, hostile: dict[str, Any]
) -> None:
    for name, (state, words) in hostile.items():
        for path, body in (
            ("/generate", {"prime": "x", "length": 5}),
            ("/generate/stream", {"length": 5}),
            ("/score", {"text": "xy"}),
        ):
            response = await client.post(path, json={**body, "state": state})
            assert response.status_code == 422, (name, path, response.text)
            detail = response.json()["detail"][0]
            assert detail["loc"] == ["body", "state"], (name, path, detail)
            assert words in detail["msg"], (name, path, detail)
        if isinstance(state, str) and len(state) < 4000:  # a query string of a few KB
            response = await client.get("/generate/stream", params={"state": state, "length": 5})
            assert response.status_code == 422, (name, response.text)
            assert response.json()["detail"][0]["loc"] == ["query", "state"], name


async def test_damaged_states_are_a_400_in_openai_shape(
    client: httpx.AsyncClient, hostile: dict[str, Any]
) -> None:
    for name, (state, words) in hostile.items():
        body = {"model": "tiny", "prompt": "x", "max_tokens": 5, "n": 2, "state": state}
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert error["param"] == "state", (name, error)
        assert words in error["message"], (name, error)


async def test_a_state_never_affects_another_request(
    client: httpx.AsyncClient, hostile: dict[str, Any], service: ModelService
) -> None:
    """Requests without a state, run beside forks of a state and beside refused states,
    give what they give alone; nothing is left running."""
    first = await client.post("/generate", json={"prime": "ab", "length": 30, "return_state": True})
    state = first.json()["state"]
    plain = [{"prime": "the ", "length": 60, "seed": seed} for seed in range(3)]
    alone = [(await client.post("/generate", json=body)).json()["text"] for body in plain]
    answers: dict[int, httpx.Response] = {}

    async def send(index: int, body: dict[str, Any]) -> None:
        answers[index] = await client.post("/generate", json=body)

    crowd = [*plain]
    crowd += [{"state": state, "prime": "the ", "length": 60, "seed": s} for s in range(4)]
    crowd += [{"state": bad, "prime": "the ", "length": 60} for bad, _ in hostile.values()]
    async with anyio.create_task_group() as group:
        for index, body in enumerate(crowd):
            group.start_soon(send, index, body)
    assert [answers[index].json()["text"] for index in range(3)] == alone
    forks = [answers[index].json()["text"] for index in range(3, 7)]
    assert len(set(forks)) == 4
    assert all(answers[index].status_code == 422 for index in range(7, len(crowd)))
    assert service.engine.active == 0
