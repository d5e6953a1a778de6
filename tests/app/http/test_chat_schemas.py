"""app/http/chat_schemas.py: a chat request as the completion request of its conversation,
and the message forms clients send."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.http.chat_schemas import ChatCompletionRequest, ChatMessage, Delta

HELLO = [{"role": "user", "content": "Hi"}]


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": HELLO, **fields})


def test_the_completion_keeps_the_shared_fields():
    chat = request(
        n=3, seed=5, temperature=0.5, top_k=4, regex="[a-z]+", stream=True, logit_bias={"1": 2}
    )
    completion = chat.completion("PROMPT", ("\n\n",))
    assert completion.prompt == "PROMPT" and completion.stop == ["\n\n"]
    assert (completion.n, completion.seed, completion.temperature) == (3, 5, 0.5)
    assert (completion.top_k, completion.regex, completion.stream) == (4, "[a-z]+", True)
    assert completion.logit_bias == {"1": 2.0} and completion.logprobs is None


@pytest.mark.parametrize(
    "stop, default, expected",
    [
        (None, ("\n\n",), ["\n\n"]),
        ([], ("\n\n",), None),
        (["x"], ("\n\n",), ["x"]),
        (None, (), None),
    ],
)
def test_the_templates_stop_is_a_default(stop, default, expected):
    assert request(stop=stop).completion("p", default).stop == expected


@pytest.mark.parametrize(
    "fields, logprobs, length",
    [
        ({}, None, None),
        ({"logprobs": True}, 0, None),
        ({"logprobs": True, "top_logprobs": 3}, 3, None),
        ({"logprobs": False}, None, None),
        ({"max_tokens": 9}, None, 9),
        ({"max_completion_tokens": 9}, None, 9),
        ({"max_completion_tokens": 9, "max_tokens": 9}, None, 9),
    ],
)
def test_logprobs_and_length(fields, logprobs, length):
    completion = request(**fields).completion("p", ())
    assert (completion.logprobs, completion.max_tokens) == (logprobs, length)


def test_a_message_as_the_template_sees_it():
    parts = [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]
    message = ChatMessage.model_validate({"role": "developer", "content": parts, "name": "X"})
    assert message.for_template() == {"role": "system", "content": "One\nTwo", "name": "X"}
    empty = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": []})
    assert empty.for_template() == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user"},
        {"role": "tool", "content": "x", "tool_call_id": "1"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": ["plain string part"]},
        {"role": "assistant", "content": "x", "function_call": {"name": "f"}},
        {"role": "user", "content": "x", "name": ""},
        "a string",
    ],
)
def test_messages_a_text_model_cannot_take(message):
    with pytest.raises(ValidationError):
        ChatMessage.model_validate(message)


def test_a_delta_sends_only_what_it_has():
    assert Delta(role="assistant", content="").model_dump() == {"role": "assistant", "content": ""}
    assert Delta(content="x").model_dump_json() == '{"content":"x"}'
    assert Delta().model_dump() == {}
