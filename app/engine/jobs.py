"""A request inside the decoding engine: its parameters, its output as it grows, its end
(Job for a generation; ScoreJob for a text to score).

The engine thread writes (model/decoding/output.py's RowOutput, then `finish`); an HTTP
handler reads with `chunks()`, which coalesces what was made since the last read:

    async for chunk in job.chunks(interval): chunk.text, chunk.logprobs
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from model.decoding.output import Logprobs, RowOutput
from model.decoding.params import GenerationParams
from model.scoring import Scorer
from model.state import RecurrentState


class JobFailed(RuntimeError):
    """The engine could not finish this request; the message is safe to show a client."""


@dataclass
class JobStats:
    prime_chars: int
    seed: int
    submitted_at: float = field(default_factory=time.perf_counter)
    first_char_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Chunk:
    text: str
    logprobs: Logprobs  # one per character of text, when the request asked (else empty)


Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class EngineWork:
    """What a generation and a score share: the engine finishes it once (with an error or
    not), a client may cancel it, and one coroutine may wait to be woken from the engine's
    thread."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._done = threading.Event()
        self._cancelled = False
        self._lock = threading.Lock()  # guards the waiter hand-off only
        self._waiter: Waiter | None = None  # woken at every step (a stream's chunks)
        self._end_waiter: Waiter | None = None  # woken once, at the end (finished())
        self._on_finish: Callable[[], None] | None = None  # see on_finish()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the work (the client left); the engine drops it at its next turn."""
        self._cancelled = True

    # --- engine side -----------------------------------------------------------------
    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the work ends (the engine releases its client's
        counts there; a ScoreJob later, once its answer is written)."""
        self._on_finish = callback

    def finish(self, error: str | None = None) -> None:
        """End the work (failed, with `error`); the waiting coroutines wake. Only the first
        call counts."""
        if self.done:
            return
        self.error = error
        self._finished_at(time.perf_counter())
        self._done.set()
        self._ended()
        self.wake(last=True)
        with self._lock:
            waiter, self._end_waiter = self._end_waiter, None
        _set(waiter)

    def _finished_at(self, now: float) -> None:
        """Record when the work ended (each kind keeps it in its own place)."""

    def _ended(self) -> None:
        """The engine is done with the work: its client's counts go (see on_finish)."""
        self._give_back()

    def _give_back(self) -> None:
        """Call the on_finish callback, once, from whichever thread comes first."""
        with self._lock:
            callback, self._on_finish = self._on_finish, None
        if callback is not None:
            callback()

    def wake(self, last: bool = False) -> None:
        """Wake the waiting coroutine, if one waits. The engine calls it for every row at
        every step: without `last`, a look without the lock comes first. A waiter that
        registers just after that look is woken by the row's next step, and the last wake
        of all (at the end) always takes the lock, so none waits forever."""
        if not last and self._waiter is None:
            return
        with self._lock:
            waiter, self._waiter = self._waiter, None
        _set(waiter)

    # --- consumer side ---------------------------------------------------------------
    async def finished(self) -> None:
        """Wait until the engine has finished the work, woken once at its end (a stream's
        chunks() is woken at every step instead). Raises JobFailed if the engine failed
        it; leaving early (a client disconnect) cancels it."""
        try:
            await self._until_end()
        finally:
            if not self.done:
                self.cancel()
        if self.error:
            raise JobFailed(self.error)

    async def _until_end(self, seconds: float | None = None) -> None:
        """Wait for the end of the work, or at most `seconds` (None: however long)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            if self.done:
                return
            self._end_waiter = (loop, event)
        timer = None if seconds is None else loop.call_later(seconds, event.set)
        try:
            await event.wait()
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                if self._end_waiter is not None and self._end_waiter[1] is event:
                    self._end_waiter = None


class Job(EngineWork):
    """One generation request. `chars` maps ids to characters (the model's vocabulary)."""

    def __init__(
        self,
        params: GenerationParams,
        chars: tuple[str, ...],
        model: str,
        client: str | None = None,
        state: RecurrentState | None = None,
        return_state: bool = False,
    ):
        self.params = params
        self.chars = chars
        self.model = model
        self.client = client  # who asked (an address): for per-client limits and shares
        self.admitted = False  # given a row by the engine (under its lock)
        # The text it continues (params.prime then starts with that text's last character,
        # which the state has read), and whether to keep the state after its own text.
        self.state = state
        self.return_state = return_state
        self.final_state: RecurrentState | None = None  # set before finish, if asked
        super().__init__()
        self.output = RowOutput()
        read = len(params.prime) - (state is not None)  # a state's last character is read
        self.stats = JobStats(prime_chars=read, seed=params.seed)
        self._taken = 0

    @cached_property
    def char_array(self) -> np.ndarray:
        """`chars` as an object array, to look up many ids at once (logprobs' columns)."""
        return np.array(self.chars, dtype=object)

    def _finished_at(self, now: float) -> None:
        self.stats.finished_at = now

    # --- consumer side ---------------------------------------------------------------
    def _ready(self) -> bool:
        return self.output.released > self._taken

    def take(self) -> Chunk:
        """What was released since the last take (the engine may append meanwhile: the
        output's lists only grow, and `released` moves only after what it covers)."""
        end = self.output.released
        start, self._taken = self._taken, end
        ids = self.output.ids[start:end]
        count = self.params.logprobs
        logprobs = (
            Logprobs.empty() if count is None else self.output.logprobs.slice(start, end, count)
        )
        return Chunk("".join(self.chars[i] for i in ids), logprobs)

    async def chunks(
        self,
        min_interval: float | Callable[[], float] = 0.0,
        keepalive: float | None = None,
    ) -> AsyncIterator[Chunk]:
        """The output as it is made, coalesced: each chunk holds everything released since
        the previous one, and chunks come at most every `min_interval` seconds (a number,
        or a function asked before each). The first goes out as soon as it is ready. With
        `keepalive`, an empty chunk comes after that many seconds without output (say,
        while waiting for a row). Raises JobFailed if the engine failed the job. Leaving
        the loop early (a client disconnect) cancels the job."""
        loop = asyncio.get_running_loop()
        interval = min_interval if callable(min_interval) else lambda: min_interval
        last_yield = -math.inf
        try:
            while True:
                wait = last_yield + interval() - loop.time()
                if wait > 0 and not self.done:
                    # Let a few steps' chars gather into one chunk; the end cuts it short,
                    # so the last characters and the end go out at once, not a chunk
                    # interval (up to a second for a client holding many streams) later.
                    await self._until_end(wait)
                event = asyncio.Event()
                with self._lock:
                    ready = self._ready()
                    if not ready and not self.done:
                        self._waiter = (loop, event)
                if not ready and not self.done:
                    try:
                        await asyncio.wait_for(event.wait(), keepalive)
                    except TimeoutError:
                        yield Chunk("", Logprobs.empty())
                        continue
                if self._ready():
                    last_yield = loop.time()
                    yield self.take()
                elif self.done:
                    if self.error:
                        raise JobFailed(self.error)
                    return
        finally:
            if not self.done:
                self.cancel()


class ScoreJob(EngineWork):
    """One text to score, run by the engine in slices between decoding steps, beside the
    other texts being scored (model/scoring_rows.py). Until the engine starts it, it
    holds only its ids (int32): the Scorer and its result arrays are made then.
    `await job.result()` once it is queued, and call answered() once its answer is
    written or never will be.

    The scores outlive the engine's work: the answer is written as its client reads it
    (app/http/score_body.py), and a client reading slowly keeps the scorer's arrays (up to
    MAX_SCORE_CELLS × 16 bytes) alive meanwhile. So the client's place in its quota is
    given back when both are done, the engine's work and the answer: a client holds at
    most its quota of scorers, finished or not."""

    def __init__(
        self,
        ids: np.ndarray,
        top_n: int,
        model: str,
        client: str | None = None,
        state: RecurrentState | None = None,
    ):
        super().__init__()
        self.ids = ids  # after a state: its last character, then the text (Scorer)
        self.top_n = top_n
        self.model = model
        self.client = client  # who asked: the engine shares the scoring rows by client
        self.state = state
        self.scorer: Scorer | None = None  # made when the engine starts the job
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None
        self._answered = False  # see answered()

    def _finished_at(self, now: float) -> None:
        self.finished_at = now

    def _ended(self) -> None:
        if self.scorer is None or self._answered:  # nothing scored, or nothing to write
            self._give_back()

    def answered(self) -> None:
        """The answer is written, or never will be (the client left, it failed): the
        client's place goes back now, or when the engine ends the work if it has not."""
        self._answered = True
        if self.done:
            self.scorer = None  # its arrays go with the answer's last reference
            self._give_back()

    async def result(self) -> Scorer:
        """Wait for the scores (finished()), then the scorer that holds them."""
        await self.finished()
        if self.scorer is None:  # ended before it started (cancelled)
            raise JobFailed("the text was not scored")
        return self.scorer


def _set(waiter: Waiter | None) -> None:
    """Set a waiting coroutine's event, from the engine's thread."""
    if waiter is not None:
        loop, event = waiter
        loop.call_soon_threadsafe(event.set)
