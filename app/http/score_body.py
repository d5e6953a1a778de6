"""POST /score's JSON body (app/http/schemas.py: ScoreResponse), written in pieces as the
client reads it.

A long text's answer is large: 250,000 characters with top_n 5 is ~40 MB of JSON, made
of ~1.5 million numbers. Built whole, it took ~0.3 s of the event loop and several times
its size in Python lists and strings at once, and then sat whole in the connection's send
buffer until its client took it; a burst of such answers held gigabytes. Written in pieces
of PIECE_CHARS positions, each piece is made only when the connection has room for it
(uvicorn pauses the writer past the send buffer's bound: app/gate/send_deadline.py), so
an answer costs its scorer's arrays and one piece, and the event loop a few milliseconds
at a time.

    {"model":…,"text":…,"chars":…,…,"perplexity":…,
     "logprobs":[null, piece, piece, …],"surprisal_bits":[…],
     "top_chars":[[], …],"top_logprobs":[[], …],"seconds":…,"state":…}

The fields come in ScoreResponse's order, with the same values: position 0 (the first
character, which nothing predicts) is null / [] unless the text follows a state, whose
last character is position 0 and is left out.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncIterator, Iterator

import numpy as np
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.engine.jobs import ScoreJob
from model.scoring import Scorer

PIECE_CHARS = 4096  # positions a piece of the body holds (~600 kB with top_n 5)
LN2 = math.log(2)


class ScoreAnswer(StreamingResponse):
    """The answer to `job`, from score_body(): the job's client keeps its quota place
    until the last piece is written or the connection ends (ScoreJob.answered), so a
    client that reads slowly holds at most its quota of scorers' arrays."""

    def __init__(self, pieces: AsyncIterator[bytes], job: ScoreJob):
        super().__init__(pieces, media_type="application/json")
        # Called once: when the response ends, however it ends, or, if it is dropped
        # without being sent, when it is collected.
        self._answered = weakref.finalize(self, job.answered)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._answered()


def score_head(fields: dict[str, object]) -> bytes:
    """The body up to the per-character lists: `{` and the scalar fields, in order."""
    return orjson.dumps(fields)[:-1] + b","


async def score_body(
    head: dict[str, object],
    scorer: Scorer,
    chars: tuple[str, ...],
    skip_first: bool,
    tail: dict[str, object],
) -> AsyncIterator[bytes]:
    """The JSON body in pieces: `head`'s fields, the scorer's per-character lists from
    position 1 (position 0 as null / [] unless `skip_first`), then `tail`'s fields."""
    yield score_head(head)
    logprobs = scorer.logprobs  # (N,) float64
    yield b'"logprobs":['
    for piece in _pieces(logprobs, skip_first, b"null"):
        yield piece
    yield b'],"surprisal_bits":['
    for piece in _pieces(-logprobs / LN2, skip_first, b"null"):
        yield piece
    if scorer.top_n:
        names = np.array(chars, dtype=object)
        yield b'],"top_chars":['
        for piece in _pieces(scorer.top_ids, skip_first, b"[]", names):
            yield piece
        yield b'],"top_logprobs":['
        for piece in _pieces(scorer.top_logprobs, skip_first, b"[]"):
            yield piece
        yield b"],"
    else:
        yield b'],"top_chars":null,"top_logprobs":null,'
    yield orjson.dumps(tail)[1:]


def _pieces(
    values: np.ndarray, skip_first: bool, first: bytes, names: np.ndarray | None = None
) -> Iterator[bytes]:
    """`values[1:]` as JSON array elements, PIECE_CHARS rows a piece, led by `first`
    (position 0's element) unless `skip_first`. With `names`, values index into it (the
    top characters)."""
    comma = b""
    if not skip_first:
        yield first
        comma = b","
    for begin in range(1, len(values), PIECE_CHARS):
        rows = values[begin : begin + PIECE_CHARS]
        items = names[rows].tolist() if names is not None else rows.tolist()
        yield comma + orjson.dumps(items)[1:-1]
        comma = b","
