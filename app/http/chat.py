"""OpenAI chat completions on the completions machinery: the conversation, rendered by the
model's chat template, is the prompt of a CompletionRun (app/http/completions.py).

    ChatCompletionRequest ─render─▶ prompt ─request.completion()─▶ CompletionRequest
        ─CompletionRun.start─▶ n jobs (seeds seed, seed+1, ...)
    run.collect() ─▶ ChatCompletion       run.chunks() ─▶ ChatCompletionChunk, as they come

So a chat's reply is, character for character, the /v1/completions text of its rendered
conversation with the same seed and stop strings. What differs is the shape: the reply as
an assistant message, logprobs as one entry per character with its UTF-8 bytes, a stream
that opens each choice with its role, and finish_reason "stop" where a regex's match is
complete (OpenAI's clients know stop and length only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.engine.served_model import ServedModel
from app.engine.service import ModelService
from app.http.chat_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatFinishReason,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
    TopLogprob,
)
from app.http.completions import CompletionRun
from app.http.openai_schemas import CompletionUsage, Logprobs
from app.http.requests import decode_state
from model.chat_template import ChatTemplate, ChatTemplateError, template_of
from model.decoding.automaton import Automaton
from model.decoding.params import ParamError
from model.state import RecurrentState, text_after
from model.template_sandbox import OutputTooLong


def render(
    served: ServedModel,
    request: ChatCompletionRequest,
    max_chars: int,
    state: RecurrentState | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The conversation as the model's template writes it (after `state`, if given: the
    text that follows the state's, see after_state), and the template's stop strings.
    Raises ParamError("messages") for a template that fails (or refuses the messages) and
    for a text past `max_chars` (MAX_PRIME_LENGTH), ParamError("state") as after_state."""
    messages = [message.for_template() for message in request.messages]
    try:
        template = template_of(served.info)
        if state is None:
            return template.render(messages, max_chars), template.stop
        after = after_state(served, template, messages, state, max_chars, request.skip_unknown)
        return after, template.stop
    except OutputTooLong:
        after = " after the state" if state is not None else ""
        raise ParamError(
            "messages",
            f"the conversation{after}, as the model's chat template writes it, is longer "
            f"than {max_chars:,} characters (MAX_PRIME_LENGTH); send fewer or shorter messages",
            "string_too_long",
            {"max_length": max_chars},
        ) from None
    except ChatTemplateError as error:
        raise ParamError(
            "messages", f"model {served.name!r}: {error}", "chat_template_error"
        ) from None


def after_state(
    served: ServedModel,
    template: ChatTemplate,
    messages: list[dict[str, str]],
    state: RecurrentState,
    max_chars: int,
    skip_unknown: bool = False,
) -> str:
    """The text that follows `state`'s in the conversation as the template writes it. A
    reply's state is that of its rendered conversation, the reply and the stop string
    that ended it, so the next turn's conversation, with that reply as its last assistant
    message, begins with the state's text when the template writes the stop string after
    a reply (its own stop, or a shorter one: `\n` before `\n\n`) and the reply as it
    came. Raises ParamError("state") when it does not begin so, OutputTooLong past
    `max_chars` characters after the state."""
    whole = template.render(messages, state.chars + max_chars)
    after = text_after(
        state, served.vocab, whole, skip_unknown=skip_unknown, newlines=served.newlines
    )
    if after is None:
        raise ParamError(
            "state",
            "the conversation, as the model's chat template writes it, does not begin with "
            "the state's text: send the messages as they were, each reply as it came, and "
            "the state the last reply returned (a reply that ended at a stop string the "
            "template does not write after it cannot be continued from its state)",
            "state_mismatch",
        )
    if len(after) > max_chars:
        raise OutputTooLong(max_chars)
    return after


class ChatRun:
    """A chat request's CompletionRun and the chat shapes of its output."""

    def __init__(self, request: ChatCompletionRequest, run: CompletionRun):
        self.request = request
        self.run = run
        self.id = "chatcmpl-" + run.id.removeprefix("cmpl-")

    @classmethod
    def start(
        cls,
        service: ModelService,
        served: ServedModel,
        request: ChatCompletionRequest,
        client: str | None = None,
        regex: Automaton | None = None,
    ) -> ChatRun:
        """Render the conversation and queue its choices (`regex`: the request's pattern,
        compiled already, as CompletionRun.start takes it). Raises ParamError naming
        `messages` for what the template or the vocabulary cannot take, ClientBusy past the
        client's quota, or EngineBusy."""
        state = decode_state(served, request.state)  # ParamError("state")
        # Rendering is the client's work too (after a state, the whole conversation, up to
        # the body's size): it holds one of its places meanwhile (ClientBusy past its
        # quota), given back before its choices claim theirs.
        clients = service.engine.clients
        clients.claim(client)
        try:
            prompt, default_stop = render(served, request, service.limits.max_prime_length, state)
        finally:
            clients.release(client)
        try:
            run = CompletionRun.start(
                service, served, request.completion(prompt, default_stop), client, regex, state
            )
        except ParamError as error:
            if error.field == "prompt":  # the rendered conversation: the messages' words
                error.field = "messages"
                error.kind = error.kind.replace("prompt", "messages")
            raise
        return cls(request, run)

    def close(self) -> None:
        self.run.close()

    async def collect(self) -> ChatCompletion:
        """Wait for every choice; the whole response."""
        completion = await self.run.collect()
        return ChatCompletion(
            id=self.id,
            created=self.run.created,
            model=self.run.model,
            choices=[
                ChatChoice(
                    index=choice.index,
                    message=AssistantMessage(content=choice.text),
                    logprobs=self._logprobs(choice.logprobs),
                    finish_reason=_finish(choice.finish_reason) or "length",
                    state=choice.state,
                )
                for choice in completion.choices
            ],
            usage=completion.usage or self.run.usage(),
            system_fingerprint=self.run.fingerprint,
        )

    async def chunks(self, keepalive: float | None = None) -> AsyncIterator[Any]:
        """A chunk per choice with its role, then the run's chunks in chat's shape: text
        as content deltas, each choice's end as an empty delta with its finish_reason,
        and the usage, if asked, last. None for a keep-alive (see CompletionRun.chunks)."""
        for index in range(len(self.run.choices)):
            yield self._chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async for piece in self.run.chunks(keepalive):
            if piece is None or not piece.choices:  # a keep-alive, or the usage
                yield None if piece is None else self._chunk([], piece.usage)
                continue
            for choice in piece.choices:
                if choice.finish_reason is None:
                    delta = Delta(content=choice.text)
                    logprobs = self._logprobs(choice.logprobs)
                    yield self._chunk(
                        [ChunkChoice(index=choice.index, delta=delta, logprobs=logprobs)]
                    )
                else:
                    reason = _finish(choice.finish_reason)
                    end = ChunkChoice(
                        index=choice.index, delta=Delta(), finish_reason=reason, state=choice.state
                    )
                    yield self._chunk([end])

    def _chunk(
        self, choices: list[ChunkChoice], usage: CompletionUsage | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.run.created,
            model=self.run.model,
            choices=choices,
            usage=usage,
            system_fingerprint=self.run.fingerprint,
        )

    def _logprobs(self, legacy: Logprobs | None) -> ChoiceLogprobs | None:
        """The legacy columns (one entry per character) as chat's list of entries."""
        if not self.request.logprobs or legacy is None:
            return None
        entries = []
        for token, logprob, top in zip(
            legacy.tokens, legacy.token_logprobs, legacy.top_logprobs, strict=True
        ):
            alternatives = [
                TopLogprob(token=char, logprob=value, bytes=list(char.encode()))
                for char, value in (top or {}).items()
            ]
            entries.append(
                TokenLogprob(
                    token=token,
                    logprob=logprob if logprob is not None else 0.0,
                    bytes=list(token.encode()),
                    top_logprobs=alternatives,
                )
            )
        return ChoiceLogprobs(content=entries)


def _finish(reason: str | None) -> ChatFinishReason | None:
    """A regex's complete match ends a reply as a stop string does."""
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"
