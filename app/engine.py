"""The continuous-batching decoding engine: one thread owns the model and advances every
active request by one character per step, in a single batched LSTM step.

    HTTP handlers ──submit()──▶ waiting queue (bounded) ──admit: run prime──▶ decoder rows
         ▲                                                                       │
         └──── Job.chunks(): chars coalesced since the last read ◀── one step ───┘

- New requests join at the next step once their prime has run through the network;
  finished or cancelled ones leave at once (their row is reused).
- A row never waits for its client: the characters it makes are buffered in its Job,
  bounded by the request's own length (itself capped by the service's max length), so a
  slow or stuck client costs at most that much memory and cannot stall the loop.
- Each request samples with its own settings and its own seeded random stream; see
  model/decoder.py for why a seed gives the same text whatever else is being served.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from model.decoder import BatchDecoder, Request
from model.network import CharRNN
from model.sampling import SamplingConfig
from model.vocab import Vocabulary


class EngineBusy(RuntimeError):
    """The waiting queue is full; the caller should retry later."""


@dataclass(frozen=True)
class EngineConfig:
    max_active: int = 256  # rows decoded together
    max_queue: int = 1024  # requests waiting for a row
    max_admit_per_step: int = 32  # primes run between two steps, so a burst can't stall others
    # Threads that share a step's rows (the CPU kernel releases the GIL). Two on a 2-core
    # machine: the event loop needs little CPU next to the kernel.
    decode_threads: int = 1
    # Least time between two chunks of one stream. Each chunk costs the event loop an HTTP
    # write, and the loop shares the GIL with the decoding thread: waiting a little lets the
    # characters of several steps go out as one event. 0: a chunk per wake-up.
    min_chunk_interval: float = 0.02
    # Chunks per second across all streams: with many streams each one's interval
    # stretches (active / this), so the event loop's HTTP writes stay bounded and each
    # write carries more characters. 0: no such bound.
    max_chunks_per_second: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("max_active", "max_admit_per_step", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be at least 0, got {self.max_queue}")
        for name in ("min_chunk_interval", "max_chunks_per_second"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")


@dataclass
class JobStats:
    prime_chars: int
    seed: int
    submitted_at: float = field(default_factory=time.perf_counter)
    first_char_at: float | None = None
    finished_at: float | None = None
    chars: int = 0


class Job:
    """One request inside the engine: its inputs, its output buffer and its state."""

    def __init__(self, prime: list[int], config: SamplingConfig, seed: int):
        self.prime = prime
        self.config = config
        self.stats = JobStats(prime_chars=len(prime), seed=seed)
        self.error: str | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancelled = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating (the client left); the engine frees the row at its next step."""
        self._cancelled = True

    # --- engine side -----------------------------------------------------------------
    def _emit(self, char: str) -> bool:
        """Append one char; returns True when the job has its full length."""
        self._pending.append(char)
        self.stats.chars += 1
        if self.stats.first_char_at is None:
            self.stats.first_char_at = time.perf_counter()
        return self.stats.chars >= self.config.length

    def _finish(self, error: str | None = None) -> None:
        self.error = error
        self.stats.finished_at = time.perf_counter()
        self._done.set()
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, event = waiter
            loop.call_soon_threadsafe(event.set)

    # --- consumer side ---------------------------------------------------------------
    def _take(self) -> str:
        with self._lock:
            chunk = "".join(self._pending)
            self._pending.clear()
        return chunk

    async def chunks(
        self,
        min_interval: float | Callable[[], float] = 0.0,
        keepalive: float | None = None,
    ) -> AsyncIterator[str]:
        """Characters as they are made, coalesced: each item holds all chars made since the
        previous one, and items come at most every `min_interval` seconds (a number, or a
        function asked before each item). The first item goes out as soon as it is ready.
        With `keepalive`, an empty item comes after that many seconds without characters
        (say, while waiting for a row). Leaving the loop early (a client disconnect)
        cancels the job."""
        loop = asyncio.get_running_loop()
        interval = min_interval if callable(min_interval) else lambda: min_interval
        last_yield = -math.inf
        try:
            while True:
                wait = last_yield + interval() - loop.time()
                if wait > 0 and not self.done:
                    await asyncio.sleep(wait)  # let a few steps' chars gather into one item
                event = asyncio.Event()
                with self._lock:
                    ready = bool(self._pending)
                    if not ready and not self.done:
                        self._waiter = (loop, event)
                if not ready and not self.done:
                    try:
                        await asyncio.wait_for(event.wait(), keepalive)
                    except TimeoutError:
                        yield ""
                        continue
                chunk = self._take()
                if chunk:
                    last_yield = loop.time()
                    yield chunk
                elif self.done:
                    if self.error:
                        raise RuntimeError(self.error)
                    return
        finally:
            if not self.done:
                self.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has finished with the job; True if it has."""
        return self._done.wait(timeout)

    def wait_text(self, timeout: float | None = None) -> str:
        """Block until finished and return all the text (for synchronous callers)."""
        if not self._done.wait(timeout):
            self.cancel()
            raise TimeoutError("generation did not finish in time")
        if self.error:
            raise RuntimeError(self.error)
        return self._take()


class DecodingEngine:
    """Owns the model in one background thread; thread-safe `submit` from anywhere."""

    def __init__(self, model: CharRNN, vocab: Vocabulary, config: EngineConfig):
        self.vocab = vocab
        self.config = config
        self.decoder = BatchDecoder(model, config.max_active, threads=config.decode_threads)
        self._rows: list[Job] = []  # job of each live decoder row
        self._queue: collections.deque[Job] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.chars_generated = 0
        self.steps = 0
        self.jobs_failed = 0  # ended by an error (a failed step, or a stop while running)

    @property
    def active(self) -> int:
        return len(self._rows)

    def chunk_interval(self) -> float:
        """Least seconds between two chunks of one stream, given how many are active."""
        config = self.config
        if config.max_chunks_per_second == 0:
            return config.min_chunk_interval
        return max(config.min_chunk_interval, self.active / config.max_chunks_per_second)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the decoding thread (idempotent; a stopped engine can start again)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="decoding-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prime: list[int], config: SamplingConfig, seed: int) -> Job:
        """Queue a request; raises EngineBusy when the waiting queue is full."""
        job = Job(prime, config, seed)
        if config.length == 0:
            job._finish()
            return job
        with self._wakeup:
            free_rows = self.config.max_active - len(self._rows)
            if len(self._queue) >= self.config.max_queue + max(0, free_rows):
                raise EngineBusy(f"{len(self._queue)} requests already waiting")
            self._queue.append(job)
            self._wakeup.notify()
        return job

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._queue and not self._rows:
                    self._wakeup.wait()
                if self._stopping:
                    break
                admitted = self._pop_admissible()
            try:
                self._admit(admitted)
                if self._rows:
                    self._step()
            except Exception as error:  # keep serving: fail the affected jobs, not the process
                self._fail_all(admitted, f"generation failed: {error}")
        self._fail_all([], "the service is shutting down")

    def _pop_admissible(self) -> list[Job]:
        free = self.config.max_active - len(self._rows)
        count = min(free, self.config.max_admit_per_step, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    def _admit(self, jobs: list[Job]) -> None:
        live = []
        for job in jobs:
            if job.cancelled:
                job._finish()
            else:
                live.append(job)
        # Their primes run through the network together, one character per step for all.
        self.decoder.add_many([Request(job.prime, job.config, job.stats.seed) for job in live])
        self._rows.extend(live)

    def _step(self) -> None:
        ids = self.decoder.step()  # (n,)
        chars = self.vocab.chars
        leaving = []
        for row, (job, char_id) in enumerate(zip(self._rows, ids.tolist(), strict=True)):
            if job.cancelled or job._emit(chars[char_id]):
                leaving.append(row)
        self.steps += 1
        self.chars_generated += len(self._rows)
        for job in self._rows:
            job._wake()
        # Highest rows first: the decoder moves its last live row into a freed one, and
        # every row above the current one has already left.
        for row in reversed(leaving):
            job = self._rows[row]
            moved = self.decoder.remove(row)
            if moved is not None:
                self._rows[row] = self._rows[moved]
            self._rows.pop()
            job._finish()

    def _fail_all(self, extra: list[Job], message: str) -> None:
        with self._wakeup:
            jobs = [*self._rows, *extra, *self._queue]
            self._queue.clear()
        while self.decoder.size:
            self.decoder.remove(self.decoder.size - 1)
        self._rows.clear()
        for job in jobs:  # after the rows are free, so a woken caller sees them free
            if not job.done:
                self.jobs_failed += 1
                job._finish(message)
