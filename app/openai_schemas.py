"""OpenAI's legacy completions API, as far as a character-level model can honour it.

Tokens are characters here: max_tokens counts characters, and usage reports them. Fields
OpenAI defines that cannot apply (logprobs, penalties, logit_bias, suffix, best_of > n)
are accepted at their neutral values, so clients that always send them still work, and
refused otherwise. Two fields are ours: top_k, and skip_unknown (drop prompt characters
the model does not know instead of a 400); pass them with the client's `extra_body`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.sampling import MAX_SEED

MAX_CHOICES = 16  # n × prompts: one request may not take every row of the engine
MAX_STOPS = 4  # as OpenAI


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="a last chunk with usage and no choices")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "shakespeare", "prompt": "ROMEO:\n", "max_tokens": 200}]
        },
    )

    model: str = Field(description="the served model's name (GET /v1/models)")
    prompt: str | list[str] = Field("", description="text to continue, or several")
    max_tokens: int | None = Field(
        None, ge=1, description="characters per choice; default: the server's DEFAULT_LENGTH"
    )
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0: greedy")
    top_p: float = Field(1.0, ge=0, le=1, allow_inf_nan=False, description="0: greedy")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="independent samples per prompt")
    stop: str | list[str] | None = Field(
        None,
        validate_default=True,  # None too becomes a list
        description="up to 4 sequences; the text ends before the first one found",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="choice i samples with seed + i: repeatable"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = Field(False, description="prepend the prompt to each choice's text")
    user: str | None = Field(None, description="accepted and ignored")
    # OpenAI fields accepted at their neutral values only.
    best_of: int | None = None
    logprobs: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    # Ours.
    top_k: int | None = Field(None, ge=1, description="sample only from the k likeliest chars")
    skip_unknown: bool = Field(False, description="drop prompt chars the model does not know")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences cannot be empty")
        return stops

    @field_validator("logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("not supported by this model")
        return value

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("not supported by this model (only 0)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("not supported by this model (only empty)")
        return value

    @model_validator(mode="after")
    def _choices(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (only equal to n)")
        if self.n * len(self.prompts) > MAX_CHOICES:
            raise ValueError(f"n × prompts is at most {MAX_CHOICES}")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give at least one prompt")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def stops(self) -> list[str]:
        assert isinstance(self.stop, list)  # the validator made it one
        return self.stop


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None = Field(description="null in all but a choice's last chunk")


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="prompt characters the model read")
    completion_tokens: int = Field(description="characters generated (after a stop cut)")
    total_tokens: int


class Completion(BaseModel):
    """The whole response, and (with usage None) each chunk of a stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "charrnn-service"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, server_error…")
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: what its clients raise as BadRequestError, and so on."""

    error: ErrorBody
