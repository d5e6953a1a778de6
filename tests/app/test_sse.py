import asyncio

from app import sse
from app.routes import events
from app.schemas import GenerationStats


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


class FakeGeneration:
    """What the stream routes read: chunks ("" = nothing new yet), then stats."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self.stats = GenerationStats(
            chars=3, seconds=1.0, chars_per_second=3.0, seed=1, prime_chars=1, model="m"
        )

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


def test_empty_chunks_become_keepalive_comments():
    async def collect():
        return [event async for event in events(FakeGeneration(["", "a\n", "", "b"]))]

    out = asyncio.run(collect())
    assert out[:4] == [
        sse.KEEPALIVE,
        'event: chars\ndata: "a\\n"\n\n',
        sse.KEEPALIVE,
        'event: chars\ndata: "b"\n\n',
    ]
    assert out[4].startswith("event: done\ndata: {") and len(out) == 5
