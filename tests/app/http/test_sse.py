import asyncio
import json

from app.engine.jobs import Job
from app.http import sse
from app.http.native_responses import events
from model.decoding.params import GenerationParams
from tests.model.decoding.test_output import logprob_row

CHARS = ("a", "b", "\n")


def test_event_format():
    assert sse.event("chars", '"ab"') == 'event: chars\ndata: "ab"\n\n'


def test_response_headers():
    async def nothing():
        return
        yield

    response = sse.response(nothing())
    assert response.media_type == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


def job(**options) -> Job:
    return Job(GenerationParams(prime=(0,), length=3, seed=1, **options), CHARS, "m")


def test_silence_becomes_keepalive_comments_then_chars_and_done():
    waiting = job()

    async def collect():
        stream = events(waiting, lambda: 0.0, keepalive=0.01)
        out = [await anext(stream), await anext(stream)]  # nothing made yet
        for char in (0, 2, 1):  # the engine's side: what RowOutput and finish do
            waiting.output.extend([char], 0)
        waiting.output.finish("length")
        waiting.finish()
        return out + [event async for event in stream]

    out = asyncio.run(collect())
    assert out[:3] == [sse.KEEPALIVE, sse.KEEPALIVE, 'event: chars\ndata: "a\\nb"\n\n']
    assert out[3].startswith("event: done\ndata: {") and len(out) == 4
    done = json.loads(out[3].split("data: ", 1)[1])
    assert done["finish_reason"] == "length" and done["stats"]["chars"] == 3


def test_logprobs_follow_their_chars_and_an_error_ends_the_stream():
    failing = job(logprobs=1)
    failing.output.logprobs.append(logprob_row(1, -0.5, [0], [-0.25]))
    failing.output.extend([1], 0)
    failing.finish("generation failed")

    async def collect():
        return [event async for event in events(failing, lambda: 0.0)]

    both, error = asyncio.run(collect())  # chars and their logprobs: one write
    chars, logprobs = both.split("\n\n", 1)
    assert chars == 'event: chars\ndata: "b"'
    assert logprobs.startswith("event: logprobs\ndata: ") and logprobs.endswith("\n\n")
    assert json.loads(logprobs.split("data: ", 1)[1]) == {
        "chars": ["b"],
        "logprobs": [-0.5],
        "top_chars": [["a"]],
        "top_logprobs": [[-0.25]],
    }
    assert error == 'event: error\ndata: {"message":"generation failed"}\n\n'
