"""app/http/schemas.py: the request model's defaults and bounds (the HTTP 422s are in
test_routes.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.http.schemas import GenerateRequest
from model.decoding.params import MAX_SEED, MAX_TOP_K, GenerationParams


def test_defaults_are_the_request_types() -> None:
    request = GenerateRequest()
    assert request.prime == "" and request.length is None  # None: the server's default
    assert (request.temperature, request.top_k, request.top_p) == (1.0, None, 1.0)
    assert request.seed is None and request.skip_unknown is False
    defaults = GenerationParams(prime=(0,), length=1, seed=0)
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "repetition_penalty",
        "repeat_last_n",
        "frequency_penalty",
        "presence_penalty",
    ):
        assert getattr(request, name) == getattr(defaults, name), name
    assert request.stop == [] and request.logit_bias == {} and request.logprobs is None


def test_stop_takes_a_string_or_a_list_and_bias_takes_json_text() -> None:
    assert GenerateRequest(stop="\n\n").stop == ["\n\n"]
    assert GenerateRequest(stop=["a", "b"]).stop == ["a", "b"]
    assert GenerateRequest(logit_bias='{"e": -100}').logit_bias == {"e": -100}


@pytest.mark.parametrize(
    "fields",
    [
        {"length": 0},
        {"temperature": 0},
        {"temperature": 100},
        {"top_p": 1.0},
        {"top_k": 0},
        {"top_k": MAX_TOP_K},
        {"seed": 0},
        {"seed": MAX_SEED},
        {"min_p": 1},
        {"repetition_penalty": 10},
        {"frequency_penalty": -2},
        {"presence_penalty": 2},
        {"logprobs": 5},
        {"logit_bias": {"a": -100, "b": 100}},
        {"stop": ["x" * 32] * 4},
    ],
)
def test_edges_are_accepted(fields: dict) -> None:
    GenerateRequest(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"length": -1},
        {"temperature": -0.1},
        {"temperature": 100.5},
        {"temperature": float("inf")},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": float("nan")},
        {"top_k": -1},
        {"top_k": 9223372036854775808},
        {"top_k": "many"},
        {"seed": MAX_SEED + 1},
        {"seed": -1},
        {"min_p": 1.5},
        {"min_p": float("nan")},
        {"repetition_penalty": 0},
        {"repetition_penalty": 11},
        {"repeat_last_n": -1},
        {"repeat_last_n": 10**6},
        {"frequency_penalty": 2.5},
        {"presence_penalty": float("-inf")},
        {"logprobs": 6},
        {"logprobs": -1},
        {"logit_bias": {"a": 101}},
        {"logit_bias": {"a": float("nan")}},
        {"logit_bias": "not json"},
        {"stop": ["x"] * 5},
        {"stop": ["x" * 33]},
        {"stop": [""]},
        {"prime": 42},
        {"unknown_field": 1},
    ],
)
def test_out_of_range_is_refused(fields: dict) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest(**fields)
    assert caught.value.errors()[0]["loc"][0] == next(iter(fields))


def test_json_schema_has_an_example() -> None:
    schema = GenerateRequest.model_json_schema()
    assert schema["examples"][0]["prime"] == "ROMEO:\n"
    assert schema["additionalProperties"] is False
