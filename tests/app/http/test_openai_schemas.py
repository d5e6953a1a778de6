"""app/http/openai_schemas.py: what the completions request accepts and refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.http.openai_schemas import MAX_CHOICES, CompletionRequest


def test_defaults_and_stop_normalised_to_a_list() -> None:
    request = CompletionRequest(model="m", prompt="hi")
    assert (request.n, request.temperature, request.top_p, request.stream) == (1, 1.0, 1.0, False)
    assert request.stop is None and request.prompts == ["hi"]
    assert CompletionRequest(model="m", stop="\n").stop == ["\n"]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts == ["a", "b"]


@pytest.mark.parametrize(
    "fields",
    [
        # What clients send by default, at neutral values, is accepted.
        {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "logprobs": None},
        {"best_of": 2, "n": 2},
        {"user": "someone", "echo": True, "stream_options": {"include_usage": True}},
        {"temperature": 0, "top_p": 0},  # greedy
        {"top_k": 3, "skip_unknown": True, "min_p": 0.1, "regex": "[a-z]+"},  # ours
        {"logprobs": 5, "frequency_penalty": 2, "presence_penalty": -2},
        {"logit_bias": {"50256": -100, "3": 100}},  # ids are checked against the model later
        {"max_tokens": 0, "echo": True, "logprobs": 0},  # scores the prompt
    ],
)
def test_accepted(fields: dict) -> None:
    CompletionRequest(model="m", **fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"logit_bias": {"1": -101}}, "logit_bias"),
        ({"logit_bias": {"1": "x"}}, "logit_bias"),
        ({"suffix": "end"}, "suffix"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"n": MAX_CHOICES + 1}, "n"),
        ({"prompt": [1, 2, 3]}, "prompt"),  # token ids: there are no tokens here
        ({"colour": "red"}, "colour"),
    ],
)
def test_refused_naming_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest(model="m", **fields)
    assert field in {str(error["loc"][0]) for error in caught.value.errors()}


@pytest.mark.parametrize("fields", [{"best_of": 3}, {"n": 5, "prompt": ["a"] * 4}, {"prompt": []}])
def test_refused_as_a_whole(fields: dict) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", **fields)
