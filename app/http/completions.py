"""OpenAI completions on the ModelService: one engine job per choice.

    CompletionRequest ──CompletionRun.start──▶ n jobs per prompt (seeds seed, seed+1, ...)
    run.collect() ─▶ Completion           run.chunks() ─▶ Completion chunks, as they come

Each prompt × choice becomes a GenerateRequest and then GenerationParams through the same
edge as the native API (app/http/requests.py), so both APIs mean the same by every setting.
Stop strings end a job in the engine; its row is freed at once. Choices stream
interleaved, each chunk naming its index, as OpenAI's do; a stream silent for a while
(waiting for a row) gets None from `chunks()`, which the route sends as a `: ping`.
A chat request (app/http/chat.py) is a run of this kind over its rendered conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial

from app.engine.jobs import Job
from app.engine.served_model import ServedModel
from app.engine.service import ModelService
from app.http.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    FinishReason,
    Logprobs,
)
from app.http.requests import continuing, decode_state, generation_params
from app.http.schemas import GenerateRequest, SamplingFields
from model.decoding.automaton import Automaton
from model.decoding.output import Logprobs as CharLogprobs
from model.decoding.params import (
    MAX_SEED,
    GenerationParams,
    ParamError,
    encode_logit_bias,
    resolve_seed,
)
from model.state import RecurrentState, StateCodec

# Our field names in ParamError, as OpenAI's clients know them.
OPENAI_PARAM = {"length": "max_tokens", "prime": "prompt", "prompt_logprobs": "echo"}
OPENAI_CODE = {"prime_out_of_vocabulary": "prompt_out_of_vocabulary"}


@dataclass
class _Choice:
    index: int
    job: Job
    echo: str  # the prompt as the model read it, when echoed ("" otherwise)
    text: str = ""
    offsets: int = 0  # characters of `text` covered by logprobs so far
    logprobs: Logprobs = field(default_factory=Logprobs)


def choice_params(
    service: ModelService,
    served: ServedModel,
    request: CompletionRequest,
    prompt: str,
    seed: int,
    state: RecurrentState | None = None,
    regex: Automaton | None = None,
) -> GenerationParams:
    """One choice's GenerationParams (its prompt read after `state`'s text, if given); a
    ParamError names the field as OpenAI does. `regex`: the request's pattern, compiled
    already and charged to its client (served.regexes.automaton)."""
    chars = served.vocab.chars
    try:
        ids = encode_logit_bias(served.vocab, request.logit_bias or {}, keys="ids")
        bias = {chars[i]: value for i, value in ids}
        body = GenerateRequest(
            prime=prompt,
            length=request.max_tokens,
            temperature=0.0 if request.greedy else request.temperature,
            top_p=1.0 if request.greedy else request.top_p,
            seed=seed,
            stop=request.stop or [],
            logit_bias=bias,
            logprobs=request.logprobs,
            prompt_logprobs=request.echo and request.logprobs is not None,
            **request.model_dump(include=set(SamplingFields.model_fields)),
        )
        params = generation_params(served, service.limits, body, regex)
        return continuing(served, params, state, prompt, request.skip_unknown)
    except ParamError as error:
        error.field = OPENAI_PARAM.get(error.field, error.field)
        error.kind = OPENAI_CODE.get(error.kind, error.kind)
        raise


class CompletionRun:
    """The jobs of one request, running in the engine; `close()` cancels what is left."""

    def __init__(self, request: CompletionRequest, model: str):
        self.request = request
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.fingerprint: str | None = None  # system_fingerprint: see `fingerprint`
        self.prompt_chars = 0
        self.choices: list[_Choice] = []
        # The state every prompt continues (its last character, first in each prime, is
        # neither counted nor echoed), and the codec that writes the choices' final states.
        self.state: RecurrentState | None = None
        self.codec: StateCodec | None = None
        # Least seconds between a streamed choice's chunks (the engine's chunk_interval).
        self.pacing: Callable[[], float] = lambda: 0.0

    @classmethod
    def start(
        cls,
        service: ModelService,
        served: ServedModel,
        request: CompletionRequest,
        client: str | None = None,
        regex: Automaton | None = None,
        state: RecurrentState | None = None,
    ) -> CompletionRun:
        """Make every choice's params (so a bad one fails before anything runs), then
        queue them. `regex`: the request's pattern, compiled already and charged to
        `client` (served.regexes.automaton); None for a request without one. `state`: the
        request's state, decoded already (a chat decodes it to render); None: decoded
        here. Raises ParamError or EngineBusy, with nothing left running."""
        base = resolve_seed(request.seed)
        planned = []
        run = cls(request, served.name)
        run.fingerprint = fingerprint(served)
        run.pacing = partial(service.engine.clients.chunk_interval, client)
        run.codec = served.state_codec
        if state is None:
            state = decode_state(served, request.state)
        run.state = state  # one object for n forks
        for prompt in request.prompts:
            params = [
                choice_params(
                    service, served, request, prompt, (base + n) % (MAX_SEED + 1), state, regex
                )
                for n in range(request.n)
            ]
            read = params[0].prime[1:] if state is not None else params[0].prime
            run.prompt_chars += len(read)
            echo = served.vocab.decode(read) if request.echo and prompt else ""
            planned.extend((choice, echo) for choice in params)
        try:
            for params, echo in planned:
                job = service.submit(served, params, client, state, request.return_state)
                run.choices.append(_Choice(len(run.choices), job, echo))
        except BaseException:
            run.close()
            raise
        return run

    def close(self) -> None:
        for choice in self.choices:
            choice.job.cancel()

    async def collect(self) -> Completion:
        """Wait for every choice; the whole response."""
        await asyncio.gather(*(self._drain(choice) for choice in self.choices))
        return self._completion(
            [self._choice(c, c.text, c.logprobs, c.job.output.finish_reason) for c in self.choices],
            usage=self.usage(),
        )

    async def chunks(self, keepalive: float | None = None) -> AsyncIterator[Completion | None]:
        """Each choice's text as it is made (echoed prompt first), paced as the engine's
        chunk_interval for this client, a last chunk per choice with its finish_reason,
        then, if asked, one with the usage and no choices. With `keepalive`, None after
        that many seconds without a chunk (the stream's `: ping`)."""
        queue: asyncio.Queue[tuple[_Choice, str, Logprobs, bool] | BaseException]
        queue = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(choice, queue)) for choice in self.choices]
        # One getter waits across timeouts: cancelling queue.get() at a timeout could lose
        # an item that arrived just then.
        getter: asyncio.Future | None = None
        try:
            running = len(pumps)
            while running:
                getter = getter or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=keepalive)
                if not done:
                    yield None
                    continue
                item, getter = getter.result(), None
                if isinstance(item, BaseException):
                    raise item
                choice, text, logprobs, last = item
                running -= last
                reason = choice.job.output.finish_reason if last else None
                yield self._completion([self._choice(choice, text, logprobs, reason)])
        finally:
            for task in [*pumps, getter]:
                if task is not None:
                    task.cancel()
            self.close()
        if self.request.include_usage:
            yield self._completion([], usage=self.usage())

    def usage(self) -> CompletionUsage:
        completion = sum(len(c.text) - len(c.echo) for c in self.choices)
        return CompletionUsage(
            prompt_tokens=self.prompt_chars,
            completion_tokens=completion,
            total_tokens=self.prompt_chars + completion,
        )

    async def _drain(self, choice: _Choice) -> None:
        await choice.job.finished()  # woken once, not at every step
        async for _ in self._pieces(choice):  # what was made, as one piece
            pass

    async def _pump(self, choice: _Choice, queue: asyncio.Queue) -> None:
        try:
            async for text, logprobs in self._pieces(choice, self.pacing):
                queue.put_nowait((choice, text, logprobs, False))
            queue.put_nowait((choice, "", Logprobs(), True))
        except Exception as error:  # the engine failed this job: the stream reports it
            queue.put_nowait(error)

    async def _pieces(
        self, choice: _Choice, interval: float | Callable[[], float] = 0.0
    ) -> AsyncIterator[tuple[str, Logprobs]]:
        """The choice's text in pieces (the echo first, once its logprobs are known), each
        with its logprobs; also kept whole on the choice."""
        echo_pending = bool(choice.echo)
        async for chunk in choice.job.chunks(interval):
            if echo_pending:
                echo_pending = False
                yield self._add(choice, choice.echo, self._prompt_logprobs(choice), self._unscored)
            yield self._add(choice, chunk.text, chunk.logprobs)
        if echo_pending:  # max_tokens 0, or nothing generated
            yield self._add(choice, choice.echo, self._prompt_logprobs(choice), self._unscored)

    @property
    def _unscored(self) -> bool:
        """Whether an echoed prompt's first character has no logprob (nothing precedes
        it); after a state, the state's text does."""
        return self.state is None

    def _prompt_logprobs(self, choice: _Choice) -> CharLogprobs:
        """The echoed prompt's logprobs: each character's but the first (nothing precedes
        it; `_add` gives it None)."""
        return choice.job.output.prompt_logprobs.read(self.request.logprobs or 0)

    def _add(
        self, choice: _Choice, text: str, raw: CharLogprobs, first_unscored: bool = False
    ) -> tuple[str, Logprobs]:
        """`text` with its logprobs (one per character; with `first_unscored`, all but
        the first) as OpenAI's columns; also appended to the choice's whole."""
        piece = Logprobs()
        if self.request.logprobs is not None:
            lead: list[None] = [None] if first_unscored else []
            top_chars = choice.job.char_array[raw.top_ids].tolist()
            tops = [
                dict(zip(chars, lps, strict=True))
                for chars, lps in zip(top_chars, raw.top_logprobs.tolist(), strict=True)
            ]
            piece.tokens = list(text)
            piece.text_offset = list(range(choice.offsets, choice.offsets + len(text)))
            piece.token_logprobs = [*lead, *raw.chosen.tolist()][: len(text)]
            piece.top_logprobs = [*lead, *tops][: len(text)]
            whole = choice.logprobs
            whole.tokens += piece.tokens
            whole.token_logprobs += piece.token_logprobs
            whole.top_logprobs += piece.top_logprobs
            whole.text_offset += piece.text_offset
        choice.text += text
        choice.offsets += len(text)
        return text, piece

    def _choice(
        self, choice: _Choice, text: str, logprobs: Logprobs, reason: FinishReason | None
    ) -> CompletionChoice:
        return CompletionChoice(
            text=text,
            index=choice.index,
            logprobs=logprobs if self.request.logprobs is not None else None,
            finish_reason=reason,
            state=self.final_state(choice) if reason is not None else None,
        )

    def final_state(self, choice: _Choice) -> str | None:
        """The token of the choice's state after its text, once it has ended (with
        return_state)."""
        final = choice.job.final_state
        return None if final is None or self.codec is None else self.codec.encode(final)

    def _completion(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None = None
    ) -> Completion:
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
            system_fingerprint=self.fingerprint,
        )


def fingerprint(served: ServedModel) -> str:
    """OpenAI's system_fingerprint: what, besides the request, decides its text (the
    network, its vocabulary, what training recorded, the device kind). A seed repeats
    its text while this stays the same."""
    identity = {
        "config": served.model.config.to_json(),
        "vocab": list(served.vocab.chars),
        "info": served.info,
        "device": served.device.type,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:12]
