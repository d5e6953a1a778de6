"""A generation job's output as the native API sends it: the JSON pieces of a response
and the server-sent events of a stream (app/http/sse.py), with `Cache-Control: no-cache`,
`X-Accel-Buffering: no`, and a `: ping` comment after 15 s without an event:

    event: chars            (any number of these; data is a JSON string of 1+ chars)
    data: "To be, or no"

    event: logprobs         (with `logprobs`: right after each chars event, columns with
    data: {"chars": ["T", ...], "logprobs": [-0.4, ...],     one entry per char)
           "top_chars": [["T", "A"], ...], "top_logprobs": [[-0.4, -1.9], ...]}

    event: done             (last: how it ended, and the stats; with return_state, the
    data: {"finish_reason": "length", "stats": {"chars": 200, ...}}     state too)

or, when generation fails after the stream began, a final `event: error`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.engine.jobs import Job, JobFailed
from app.http import sse
from app.http.schemas import GenerationEnd, GenerationStats, Logprobs, StreamError
from model.decoding.output import Logprobs as RawLogprobs
from model.state import StateCodec


def logprob_columns(job: Job, logprobs: RawLogprobs) -> dict[str, Any]:
    """The schema's Logprobs as a plain dict of columns, numbers as numpy arrays: streams
    send thousands of entries a second, and orjson writes arrays without a Python object
    per number (a pydantic model or a dict per entry costs far more)."""
    chars = job.char_array
    return {
        "chars": chars[logprobs.ids].tolist(),
        "logprobs": logprobs.chosen,
        "top_chars": chars[logprobs.top_ids].tolist(),
        "top_logprobs": logprobs.top_logprobs,
    }


def logprobs_model(job: Job, logprobs: RawLogprobs) -> Logprobs:
    """The same as the response schema (numbers as lists, for pydantic)."""
    chars = job.char_array
    return Logprobs(
        chars=chars[logprobs.ids].tolist(),
        logprobs=logprobs.chosen.tolist(),
        top_chars=chars[logprobs.top_ids].tolist(),
        top_logprobs=logprobs.top_logprobs.tolist(),
    )


def stats_of(job: Job, chars: int) -> GenerationStats:
    stats = job.stats
    finished = stats.finished_at if stats.finished_at is not None else time.perf_counter()
    seconds = finished - stats.submitted_at
    first = stats.first_char_at
    return GenerationStats(
        chars=chars,
        seconds=seconds,
        chars_per_second=chars / seconds if seconds > 0 else 0.0,
        seed=stats.seed,
        prime_chars=stats.prime_chars,
        model=job.model,
        first_char_seconds=None if first is None else first - stats.submitted_at,
    )


def end_of(job: Job, chars: int, codec: StateCodec | None = None) -> GenerationEnd:
    """How the job ended; with the token of its final state when it kept one (return_state)
    and `codec` (its model's) is given."""
    output = job.output
    count = job.params.logprobs
    asked = job.params.prompt_logprobs and count is not None
    prompt = logprobs_model(job, output.prompt_logprobs.read(count)) if asked else None
    return GenerationEnd(
        finish_reason=output.finish_reason or "length",
        regex_complete=output.regex_complete,
        prompt_logprobs=prompt,
        stats=stats_of(job, chars),
        state=None if job.final_state is None or codec is None else codec.encode(job.final_state),
    )


async def events(
    job: Job,
    interval: Callable[[], float],
    keepalive: float = sse.KEEPALIVE_SECONDS,
    codec: StateCodec | None = None,
) -> AsyncIterator[str]:
    """chars (and logprobs) events as the text is released, then done (or error); `codec`
    writes the final state's token into done (end_of)."""
    chars = 0
    try:
        async for chunk in job.chunks(interval, keepalive=keepalive):
            if not chunk.text:  # nothing new for a while (queued for a row)
                yield sse.KEEPALIVE
                continue
            chars += len(chunk.text)
            event = sse.json_event("chars", chunk.text)
            if job.params.logprobs is not None:  # one write for both: half the sends
                event += sse.json_event("logprobs", logprob_columns(job, chunk.logprobs))
            yield event
    except JobFailed as error:
        yield sse.event("error", StreamError(message=str(error)).model_dump_json())
        return
    yield sse.event("done", end_of(job, chars, codec).model_dump_json(exclude_none=True))
