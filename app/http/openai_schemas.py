"""OpenAI's legacy completions API, as far as a character-level model can honour it.

Tokens are characters here: max_tokens counts characters, usage reports them, and
`logprobs` lists one entry per character. logit_bias keys are token ids as OpenAI's are
(a character's id is its position in GET /model's vocabulary). Fields OpenAI defines
that cannot apply (suffix, best_of > n) are accepted at their neutral values, so clients
that always send them still work, and refused otherwise. The sampler settings OpenAI
lacks (top_k, min_p, repetition_penalty, repeat_last_n, regex, skip_unknown) are ours;
pass them with the client's `extra_body`, as `state` and `return_state` (a text's recurrent
state, as the native API has them: each choice then carries its `state`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from app.http.schemas import (
    RETURN_STATE_DESCRIPTION,
    STATE_DESCRIPTION,
    STATE_OUT_DESCRIPTION,
    Bias,
    SamplingFields,
    StopString,
    _listed,
)
from model.decoding.params import MAX_LOGIT_BIAS_ENTRIES, MAX_LOGPROBS, MAX_SEED, MAX_STOPS

MAX_CHOICES = 16  # n × prompts: one request may not take every row of the engine


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="a last chunk with usage and no choices")


class OpenAIFields(SamplingFields):
    """What /v1/completions and /v1/chat/completions share: the model, OpenAI's sampling
    fields (with OpenAI's bounds) and how to stream. The native sampler settings come from
    SamplingFields."""

    model: str = Field(description="a served model's name (GET /v1/models)")
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0: greedy")
    top_p: float = Field(1.0, ge=0, le=1, allow_inf_nan=False, description="0: greedy")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="independent samples per prompt")
    stop: Annotated[list[StopString], BeforeValidator(_listed)] | None = Field(
        None,
        max_length=MAX_STOPS,
        description="up to 4 sequences; the text ends before the first one found",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="choice i samples with seed + i: repeatable"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, Bias] | None = Field(
        None,
        max_length=MAX_LOGIT_BIAS_ENTRIES,
        description="{token id: bias in [-100, 100]}; -100 bans the character",
    )
    user: str | None = Field(None, description="accepted and ignored")
    return_state: bool = Field(False, description=RETURN_STATE_DESCRIPTION)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0

    @property
    def include_usage(self) -> bool:
        """A stream ends with a chunk of the usage."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(OpenAIFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "shakespeare", "prompt": "ROMEO:\n", "max_tokens": 200}]
        },
    )

    prompt: str | list[str] = Field("", description="text to continue, or several")
    max_tokens: int | None = Field(
        None,
        ge=0,
        description="characters per choice; default: the server's DEFAULT_LENGTH. 0 with "
        "echo and logprobs scores the prompt",
    )
    echo: bool = Field(False, description="prepend the prompt to each choice's text")
    state: str | None = Field(None, description=STATE_DESCRIPTION)
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="each character's log-probability and this many likeliest alternatives",
    )
    # OpenAI fields accepted at their neutral values only.
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("not supported by this model")
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


FinishReason = Literal["stop", "length", "regex"]


class Logprobs(BaseModel):
    """OpenAI's legacy shape, one entry per character (a character is a token here)."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = Field(
        [], description="null for the echoed prompt's first character"
    )
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = Field([], description="each character's offset in the text")


class WithState(BaseModel):
    """A choice whose `state` (return_state's extension field) is left out of its JSON
    unless it has one, so OpenAI's own shape is unchanged for every other request."""

    # No return annotation: pydantic would take it for the schema instead of the model's.
    @model_serializer(mode="wrap")
    def _state_only_when_given(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict) and data.get("state") is None:
            data.pop("state", None)
        return data


class CompletionChoice(WithState):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = Field(description="null in all but a choice's last chunk")
    state: str | None = Field(None, description=STATE_OUT_DESCRIPTION + " (in the last chunk)")


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
