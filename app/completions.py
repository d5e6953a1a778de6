"""OpenAI completions on the TextGenerator: one engine job per choice, stop sequences applied.

    CompletionRequest ──CompletionRun.start──▶ n jobs per prompt (seeds seed, seed+1, ...)
    run.collect() ─▶ Completion           run.chunks() ─▶ Completion chunks, as they come

A choice that meets a stop sequence is cut before it (finish_reason "stop") and its job is
cancelled at once, freeing its row; otherwise it ends at max_tokens ("length"). Choices
stream interleaved, each chunk naming its index, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.generation import Generation, InvalidRequest, Job, TextGenerator
from app.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    FinishReason,
)
from app.schemas import MIN_TEMPERATURE, GenerateRequest
from app.stop import StopScanner
from model.sampling import MAX_SEED, resolve_seed

# Our field names and error kinds in InvalidRequest, as OpenAI's clients know them.
OPENAI_PARAM = {"length": "max_tokens", "prime": "prompt"}
OPENAI_CODE = {"prime_out_of_vocabulary": "prompt_out_of_vocabulary"}


@dataclass
class _Choice:
    index: int
    prompt: str
    generation: Generation
    scanner: StopScanner
    text: str = ""
    finish_reason: FinishReason | None = None


class CompletionRun:
    """The jobs of one request, running in the engine; `close()` cancels what is left."""

    def __init__(self, request: CompletionRequest, model: str, prompt_chars: int):
        self.request = request
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.prompt_chars = prompt_chars
        self.choices: list[_Choice] = []

    @classmethod
    def start(cls, generator: TextGenerator, request: CompletionRequest) -> CompletionRun:
        """Validate every prompt, then queue every choice. Raises InvalidRequest (field
        named as OpenAI does) or EngineBusy, with nothing left running."""
        jobs = [jobs_for(generator, request, prompt) for prompt in request.prompts]
        run = cls(request, generator.name, sum(len(choices[0].prime) for choices in jobs))
        try:
            for prompt, choices in zip(request.prompts, jobs, strict=True):
                for job in choices:
                    run.choices.append(
                        _Choice(
                            index=len(run.choices),
                            prompt=prompt,
                            generation=generator.stream(job),
                            scanner=StopScanner(request.stops),
                        )
                    )
        except BaseException:
            run.close()
            raise
        return run

    def close(self) -> None:
        for choice in self.choices:
            choice.generation.close()

    async def collect(self) -> Completion:
        """Wait for every choice; the whole response."""
        await asyncio.gather(*(self._drain(choice) for choice in self.choices))
        return self._completion(
            [
                CompletionChoice(text=c.text, index=c.index, finish_reason=c.finish_reason)
                for c in self.choices
            ],
            usage=self.usage(),
        )

    async def chunks(self) -> AsyncIterator[Completion]:
        """Each choice's text as it is made (echoed prompt first), a last chunk per choice
        with its finish_reason, then, if asked, one with the usage and no choices."""
        queue: asyncio.Queue[tuple[_Choice, str, bool] | BaseException] = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(choice, queue)) for choice in self.choices]
        try:
            running = len(pumps)
            while running:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                choice, text, last = item
                running -= last
                reason = choice.finish_reason if last else None
                yield self._completion(
                    [CompletionChoice(text=text, index=choice.index, finish_reason=reason)]
                )
        finally:
            for pump in pumps:
                pump.cancel()
            self.close()
        options = self.request.stream_options
        if options is not None and options.include_usage:
            yield self._completion([], usage=self.usage())

    def usage(self) -> CompletionUsage:
        echo = self.request.echo
        completion = sum(len(c.text) - (len(c.prompt) if echo else 0) for c in self.choices)
        return CompletionUsage(
            prompt_tokens=self.prompt_chars,
            completion_tokens=completion,
            total_tokens=self.prompt_chars + completion,
        )

    async def _drain(self, choice: _Choice) -> None:
        async for _ in self._texts(choice):
            pass

    async def _pump(self, choice: _Choice, queue: asyncio.Queue) -> None:
        try:
            async for text in self._texts(choice):
                if text:
                    queue.put_nowait((choice, text, False))
            queue.put_nowait((choice, "", True))
        except Exception as error:  # the engine failed this job: the stream reports it
            queue.put_nowait(error)

    async def _texts(self, choice: _Choice) -> AsyncIterator[str]:
        """The choice's text through its stop scanner; records text and finish_reason."""
        if self.request.echo:
            choice.text += choice.prompt
            yield choice.prompt
        async for chunk in choice.generation:
            text = choice.scanner.feed(chunk)
            choice.text += text
            yield text
            if choice.scanner.stopped:
                choice.generation.close()  # frees the row now, not at max_tokens
                choice.finish_reason = "stop"
                return
        rest = choice.scanner.flush()
        choice.text += rest
        yield rest
        choice.finish_reason = "length"

    def _completion(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None = None
    ) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )


def jobs_for(generator: TextGenerator, request: CompletionRequest, prompt: str) -> list[Job]:
    """The n jobs of one prompt: the generator's own validation, seeds seed .. seed+n-1."""
    greedy = request.temperature < MIN_TEMPERATURE or request.top_p == 0
    base = resolve_seed(request.seed)
    jobs = []
    for sample in range(request.n):
        fields = GenerateRequest(
            prime=prompt,
            length=request.max_tokens,
            temperature=1.0 if greedy else request.temperature,
            top_k=1 if greedy else request.top_k,
            top_p=1.0 if greedy else request.top_p,
            seed=(base + sample) % (MAX_SEED + 1),
            skip_unknown=request.skip_unknown,
        )
        try:
            jobs.append(generator.validate(fields))
        except InvalidRequest as error:
            error.field = OPENAI_PARAM.get(error.field, error.field)
            error.kind = OPENAI_CODE.get(error.kind, error.kind)
            raise
    return jobs
