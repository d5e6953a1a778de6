"""app/schemas.py: the request model's defaults and bounds (the HTTP 422s are in
test_routes.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.schemas import MIN_TEMPERATURE, GenerateRequest
from model.sampling import MAX_SEED


def test_defaults() -> None:
    request = GenerateRequest()
    assert request.prime == "" and request.length is None  # None: the server's default
    assert (request.temperature, request.top_k, request.top_p) == (1.0, None, 1.0)
    assert request.seed is None and request.skip_unknown is False


@pytest.mark.parametrize(
    "fields",
    [
        {"length": 1},
        {"temperature": MIN_TEMPERATURE},
        {"top_p": 1.0},
        {"top_k": 1},
        {"seed": 0},
        {"seed": MAX_SEED},
    ],
)
def test_edges_are_accepted(fields: dict) -> None:
    GenerateRequest(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"length": 0},
        {"temperature": 0.0},
        {"temperature": float("inf")},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": float("nan")},
        {"top_k": 0},
        {"seed": MAX_SEED + 1},
        {"unknown_field": 1},
    ],
)
def test_out_of_range_is_refused(fields: dict) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest(**fields)
    assert caught.value.errors()[0]["loc"] == (next(iter(fields)),)


def test_json_schema_has_an_example() -> None:
    schema = GenerateRequest.model_json_schema()
    assert schema["examples"][0]["prime"] == "ROMEO:\n"
    assert schema["additionalProperties"] is False
