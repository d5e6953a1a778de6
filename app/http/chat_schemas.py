"""OpenAI's chat completions API, as far as a character-level model can honour it.

A chat request is a completion request whose prompt is the conversation, rendered by the
model's chat template (model/chat_template.py): the fields it shares with
/v1/completions (OpenAIFields) mean the same, characters are tokens, and `stop` defaults to
the template's (a blank line for the built-in ones). What a text model cannot do is
refused with a 400 naming the field: tools and functions, images, audio, a JSON
response_format (give `regex`), stored completions. Neutral values that clients send
unasked (`tool_choice: "none"`, `response_format: {"type": "text"}`, `modalities:
["text"]`, a message's `tool_calls: []` or `refusal: null`) are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from app.http.openai_schemas import CompletionRequest, CompletionUsage, OpenAIFields, WithState
from app.http.schemas import STATE_OUT_DESCRIPTION
from model.decoding.params import MAX_LOGPROBS

MAX_MESSAGES = 1024
MAX_NAME_CHARS = 64
TEXT_ONLY = "this model reads and writes text only"
NO_TOOLS = "this model cannot call tools"
# Fields OpenAI defines that this model cannot honour: (why, the neutral values accepted).
UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "tools": (NO_TOOLS, (None,)),
    "tool_choice": (NO_TOOLS, (None, "none")),
    "functions": (NO_TOOLS, (None,)),
    "function_call": (NO_TOOLS, (None, "none")),
    "audio": (TEXT_ONLY, (None,)),
    "modalities": (TEXT_ONLY, (None, ["text"])),
    "response_format": (
        'only {"type": "text"}; to shape the output, give `regex`',
        (None, {"type": "text"}),
    ),
    "prediction": ("predicted outputs are not supported", (None,)),
    "web_search_options": ("this model cannot search the web", (None,)),
    "reasoning_effort": ("this model does not reason step by step", (None,)),
    "store": ("completions are not stored here", (None, False)),
}
# A message's fields of that kind; clients echo an assistant reply back with them empty.
UNSUPPORTED_IN_MESSAGE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "tool_calls": (NO_TOOLS, (None, [])),
    "function_call": (NO_TOOLS, (None,)),
    "audio": (TEXT_ONLY, (None,)),
    "refusal": ("refusals are not supported", (None,)),
    "annotations": ("annotations are not supported", (None, [])),
}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the conversation. `developer` is OpenAI's newer name for `system`
    and is rendered as one; `name` speaks in place of the role's speaker in a play-layout
    template."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = Field(
        None, description="text, or text parts (joined by newlines); only text"
    )
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    tool_calls: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    refusal: Any = None
    annotations: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        """Clear words for what a text model cannot take (pydantic's own would list the
        union's alternatives)."""
        if not isinstance(data, dict):
            return data
        if data.get("role") in ("tool", "function"):
            raise ValueError(f"{data['role']} messages are not supported: {NO_TOOLS}")
        content = data.get("content")
        if isinstance(content, list):
            for index, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content part {index} is of type {kind!r}: {TEXT_ONLY}")
        return data

    @model_validator(mode="after")
    def _neutral(self) -> ChatMessage:
        for name, (why, neutral) in UNSUPPORTED_IN_MESSAGE.items():
            if getattr(self, name) not in neutral:
                raise ValueError(f"{name} is not supported: {why}")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, str]:
        """What the chat template sees: role (developer as system), content, name."""
        role = "system" if self.role == "developer" else self.role
        rendered = {"role": role, "content": self.text}
        if self.name is not None:
            rendered["name"] = self.name
        return rendered


class ChatCompletionRequest(OpenAIFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "shakespeare",
                    "messages": [{"role": "user", "content": "What light through yonder window?"}],
                    "max_completion_tokens": 200,
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="the conversation so far"
    )
    max_completion_tokens: int | None = Field(
        None, ge=0, description="characters per reply; default: the server's DEFAULT_LENGTH"
    )
    max_tokens: int | None = Field(None, ge=0, description="the older name of the same")
    state: str | None = Field(
        None,
        description="the `state` the last reply returned (with return_state), sent with the "
        "whole conversation, that reply as it came: only what the template writes after "
        "the state's text is read (at most MAX_PRIME_LENGTH characters), so a conversation "
        "may grow past MAX_PRIME_LENGTH",
    )
    logprobs: bool | None = Field(None, description="each reply character's log-probability")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="with logprobs: this many likeliest alternatives"
    )
    parallel_tool_calls: bool | None = Field(None, description="accepted: there are no tools")
    service_tier: Literal["auto", "default"] | None = Field(None, description="accepted")
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    response_format: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    store: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: Any) -> Any:
        why, neutral = UNSUPPORTED[info.field_name]
        if value not in neutral:
            raise ValueError(f"not supported: {why}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        given = {self.max_completion_tokens, self.max_tokens} - {None}
        if len(given) > 1:
            raise ValueError("max_completion_tokens and max_tokens differ: give one")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def length(self) -> int | None:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens

    def completion(self, prompt: str, default_stop: Sequence[str]) -> CompletionRequest:
        """The completion of `prompt` (the rendered conversation) that this request asks
        for: the shared fields as they are, the template's stop strings unless `stop` is
        given (null: the template's; []: none), logprobs in the legacy form."""
        shared = self.model_dump(include=set(OpenAIFields.model_fields))
        stop = list(default_stop) if self.stop is None else self.stop
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return CompletionRequest(
            **{**shared, "stop": stop or None},
            prompt=prompt,
            state=self.state,
            max_tokens=self.length,
            logprobs=logprobs,
        )


ChatFinishReason = Literal["stop", "length"]


class TopLogprob(BaseModel):
    token: str = Field(description="one character")
    logprob: float
    bytes: list[int] = Field(description="the character in UTF-8")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the likeliest characters, first first")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(WithState):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason = Field(
        description="stop: a stop string, or a regex's match is complete; length: "
        "max_completion_tokens reached"
    )
    state: str | None = Field(
        None, description=STATE_OUT_DESCRIPTION + " (the rendered conversation and the reply)"
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = Field(
        None, description="changes when anything but the request would change the text"
    )


class Delta(BaseModel):
    """A stream's piece of a reply: the role in a choice's first chunk, then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # As OpenAI sends them: {"role": "assistant", "content": ""}, {"content": "..."}, {}.
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(WithState):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None
    state: str | None = Field(None, description=STATE_OUT_DESCRIPTION + " (in the last chunk)")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = Field(
        None, description="with stream_options.include_usage: in the last chunk, alone"
    )
    system_fingerprint: str | None = None
