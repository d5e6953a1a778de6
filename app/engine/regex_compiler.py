"""A served model's regexes: its cache, and the compiles of patterns it lacks, each in a
worker process (model/decoding/regex_workers.py) and charged to the client that waits
for it.

    automaton(pattern, client)
      cached (or refused before) ──────────────────────────────▶ at once, no lock waited on
      else claim a place of the client's quota (ClientBusy: 429)
           join the pattern's flight, or queue a new one under the client
           ... a compile thread takes it (round-robin over clients) ──▶ a worker process
      release the place when the wait ends (answer, refusal, or the client gone)

- One flight per pattern: requests for a pattern being compiled wait for that compile.
- `compile_workers` compiles run at once (threads that wait on worker processes, holding
  no GIL), at most one per client, the next taken from the client after the last one's:
  a client with many patterns waits for its own, and another client's pattern starts as
  soon as a worker is free.
- A request waiting for a compile holds one of its client's MAX_REQUESTS_PER_CLIENT places,
  so one client cannot queue more compiles than it may send requests.
- A queued compile nobody waits for any more is dropped; a running one runs to its end
  (its CPU deadline) and its result is cached.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from app.engine.clients import ClientRules
from app.engine.engine import EngineBusy
from model.decoding.automaton import Automaton
from model.decoding.params import ParamError
from model.decoding.regex import RegexCache, RegexLimits, check_length
from model.decoding.regex_workers import RegexWorker, WorkerTimeout
from model.vocab import Vocabulary

logger = logging.getLogger("uvicorn.error")


class RegexBusy(EngineBusy):
    """A compile's worker ran past its wall-clock limit on a machine too busy to give it
    its CPU time (503: retry shortly; the pattern is not refused)."""


@dataclass(eq=False)
class _Flight:
    """One pattern's compile, with the requests waiting for it."""

    pattern: str
    future: Future[Automaton] = field(default_factory=Future)
    waiters: int = 0
    started: bool = False
    dropped: bool = False  # nobody waited any more before it started
    runner: object = None  # the client whose turn started it


class RegexCompiler:
    """The regexes of one vocabulary, compiled outside the event loop and charged to
    clients (see the module's docstring). `clients`: the gate's per-client rules (None:
    nothing is charged)."""

    def __init__(
        self,
        vocab: Vocabulary,
        limits: RegexLimits,
        clients: ClientRules | None = None,
        cache_bytes: int = 64 << 20,
    ):
        self.limits = limits
        self.clients = clients
        self.cache = RegexCache(vocab, limits, cache_bytes)
        self._chars = vocab.chars
        # Held for bookkeeping only, never while a pattern compiles.
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        # The clients with compiles queued, in turn order; each its flights, oldest first.
        self._queues: dict[object, collections.deque[_Flight]] = {}
        self._running: set[object] = set()  # clients with a compile running
        self._workers: list[RegexWorker] = []  # idle worker processes
        self._threads: ThreadPoolExecutor | None = None
        self._everyone: list[RegexWorker] = []  # every worker made, to stop them at the end
        weakref.finalize(self, _close, self._everyone)

    async def automaton(self, pattern: str, client: str | None) -> Automaton:
        """The pattern's automaton, compiled if need be while this request holds one of
        `client`'s places. Raises ParamError("regex"), ClientBusy past the client's quota,
        RegexBusy when the machine is too busy to compile in time."""
        check_length(pattern, self.limits)  # a refusal that needs no worker
        found = self.cache.lookup(pattern)
        if found is not None:
            return found
        if self.clients is not None:
            self.clients.claim(client)
        try:
            flight = self._join(pattern, client if client is not None else object())
            try:
                return await _result(flight.future)
            finally:
                self._leave(flight)
        finally:
            if self.clients is not None:
                self.clients.release(client)

    def get(self, pattern: str) -> Automaton:
        """As `automaton`, for a thread that may block (charged to no client). Raises
        ParamError("regex") or RegexBusy."""
        check_length(pattern, self.limits)
        found = self.cache.lookup(pattern)
        if found is not None:
            return found
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("RegexCompiler.get would block the event loop: use automaton()")
        flight = self._join(pattern, object())
        try:
            return flight.future.result()
        finally:
            self._leave(flight)

    @property
    def compiling(self) -> int:
        """Compiles running now."""
        return len(self._running)

    @property
    def idle_workers(self) -> int:
        """Worker processes started and waiting for a compile."""
        return len(self._workers)

    def close(self) -> None:
        """Stop the worker processes; compiles still queued fail, running ones fail or
        finish (a later compile starts the workers again)."""
        with self._lock:
            threads, self._threads = self._threads, None
            queued = [flight for flight in self._flights.values() if not flight.started]
            for flight in queued:
                del self._flights[flight.pattern]
            self._queues.clear()
            self._workers.clear()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        _close(self._everyone)
        for flight in queued:
            if not flight.future.done():
                flight.future.set_exception(RuntimeError("the regex compiler was closed"))

    # --- the queue ------------------------------------------------------------------------
    def _join(self, pattern: str, owner: object) -> _Flight:
        with self._lock:
            flight = self._flights.get(pattern)
            if flight is None:
                flight = _Flight(pattern)
                found = self.cache.lookup(pattern)  # compiled since the caller looked
                if found is not None:
                    flight.future.set_result(found)
                    return flight
                self._flights[pattern] = flight
            flight.waiters += 1
            if not flight.started:
                # In the queue of each client waiting for it: it starts at the first of
                # their turns, so a client cannot hold back another's pattern by queueing
                # the same one behind many of its own.
                self._queues.setdefault(owner, collections.deque()).append(flight)
                self._start_next()
        return flight

    def _leave(self, flight: _Flight) -> None:
        with self._lock:
            flight.waiters -= 1
            if flight.waiters > 0 or flight.started or flight.future.done():
                return
            flight.dropped = True  # left in the queues: skipped when its turn comes
            if self._flights.get(flight.pattern) is flight:
                del self._flights[flight.pattern]
        flight.future.cancel()

    def _start_next(self) -> None:  # with the lock held
        for owner in list(self._queues):
            if len(self._running) >= self.limits.compile_workers:
                return
            if owner in self._running:
                continue
            queue = self._queues.pop(owner)  # back in at the end: its next turn is last
            while queue and (queue[0].started or queue[0].dropped):
                queue.popleft()
            if not queue:
                continue
            flight = queue.popleft()
            if queue:
                self._queues[owner] = queue
            flight.started, flight.runner = True, owner
            self._running.add(owner)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.limits.compile_workers, "regex")
                # The other workers start now, beside this compile, so that another
                # client's first pattern does not wait for a process to start.
                warm = threading.Thread(target=self._warm, name="regex-warm", daemon=True)
                warm.start()
            self._threads.submit(self._compile, flight)

    def _warm(self) -> None:
        for _ in range(self.limits.compile_workers - 1):
            worker = RegexWorker()
            self._everyone.append(worker)
            try:
                worker.start()
            except RuntimeError as error:
                logger.error("%s", error)
                return
            with self._lock:
                self._workers.append(worker)

    def _compile(self, flight: _Flight) -> None:
        """In a compile thread: the flight's pattern in a worker process."""
        with self._lock:
            worker = self._workers.pop() if self._workers else None
        if worker is None:
            worker = RegexWorker()
            self._everyone.append(worker)
        result: Automaton | BaseException
        try:
            result = worker.compile(flight.pattern, self._chars, self.limits)
            self.cache.store(flight.pattern, result)
        except ParamError as error:
            self.cache.refuse(flight.pattern, error)
            result = error
        except WorkerTimeout as error:
            result = RegexBusy(f"the server is too busy to compile this regex now ({error})")
        except Exception as error:  # the worker failed: a generic 500 for its waiters
            logger.error("compiling a regex failed: %s", error)
            result = error
        with self._lock:
            self._workers.append(worker)
            if self._flights.get(flight.pattern) is flight:
                del self._flights[flight.pattern]
            self._running.discard(flight.runner)
            queue = self._queues.pop(flight.runner, None)
            if queue:  # its turn was this compile: the other clients go first
                self._queues[flight.runner] = queue
            self._start_next()
        if isinstance(result, BaseException):
            flight.future.set_exception(result)
        else:
            flight.future.set_result(result)


async def _result(future: Future[Automaton]) -> Automaton:
    """Wait for a flight's future without cancelling it when this waiter is cancelled
    (asyncio.wrap_future would: other requests may wait for the same compile)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Automaton] = loop.create_future()

    def copy(done: Future[Automaton]) -> None:
        if waiter.done() or done.cancelled():
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def done(finished: Future[Automaton]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(copy, finished)

    future.add_done_callback(done)
    return await waiter


def _close(workers: list[RegexWorker]) -> None:
    for worker in workers:
        worker.close()
