"""The continuous-batching decoding engine: one thread owns the models and advances every
active request by up to `block_steps` characters per iteration, in one batched call per
model (a character per step, `block_steps` steps per call).

    submit() ──▶ waiting queue (bounded) ──admit──▶ a decoder row ──prefill──▶ decoding
        ▲                                                                       │
        └──── Job.chunks(): text released since the last read ◀── one step ─────┘

One iteration of the thread:
  1. admit waiting requests into free rows (cheap: the prime runs later);
  2. one decoding call per model with decoding rows (each model a Lane: app/engine/lane.py;
     steps and background work: app/engine/steps.py);
  3. background work under a time budget (prefill_share of the engine's time while
     streams decode, at least one character per iteration), so a burst of long primes or
     a long text to score cannot freeze the streams already running:
       prefill: primes run in batched slices, each client's within its prime credit;
       scoring: the texts being scored read their next slices together, one batched
       pass per model (model/scoring_rows.py);
  4. finished, failed and cancelled requests leave at once (their row is reused).

A text to score is admitted as a generation is: the queue bound and its client's quota
are checked first; then it waits in the scoring queue (app/engine/scoring_queue.py), which
starts texts round-robin by client and reads them together.

Per-client rules (quota, fair shares, prime credit, rows held) are the gate's: the engine
is handed them (app/engine/clients.py) and asks at each moment it spends on a client.

Faults stay with their request: an error while admitting one request, or a row whose
sampling fails (non-finite scores, nothing allowed), or an error recording one row's
output, fails that request alone. Only a failure of a batched step itself fails the rows
of that step; the engine then keeps serving. Clients see a generic message; the log has
the detail.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.engine.clients import ClientRules
from app.engine.config import EngineConfig
from app.engine.jobs import EngineWork, Job, ScoreJob
from app.engine.lane import EngineCounters, Lane
from app.engine.scoring_queue import ScoringQueue
from app.engine.steps import background_budget, prefill, step_lanes
from model.decoding.decoder import BatchDecoder
from model.decoding.params import GenerationParams
from model.network import CharRNN
from model.state import RecurrentState

logger = logging.getLogger("charrnn.engine")


class EngineBusy(RuntimeError):
    """The waiting queue is full; the caller should retry later."""


class DecodingEngine:
    """Owns the lanes' decoders in one background thread; `submit` is thread-safe."""

    def __init__(self, config: EngineConfig, clients: ClientRules):
        self.config = config
        self.clients = clients
        self.lanes: list[Lane] = []
        self._queue: collections.deque[tuple[Lane, Job]] = collections.deque()
        # Runs other lanes' steps beside the engine thread's (_step_lanes).
        threads = config.decode_threads
        self._pool = ThreadPoolExecutor(threads - 1, "lanes") if threads > 1 else None
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counters = EngineCounters()
        self.scores = ScoringQueue(config, self.counters, self._wakeup)
        self.last_progress = time.monotonic()  # when an iteration last completed
        self.streaming = 0  # rows the last iteration's steps advanced, all models

    # --- public -----------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.counters.steps

    @property
    def chars_generated(self) -> int:
        return self.counters.chars_generated

    @property
    def jobs_failed(self) -> int:
        return self.counters.jobs_failed

    def add_lane(self, name: str, model: CharRNN, chars: tuple[str, ...]) -> Lane:
        config = self.config
        decoder = BatchDecoder(
            model,
            config.max_active,
            threads=config.decode_threads,
            prime_cache_bytes=config.prime_cache_bytes,
            block_steps=config.block_steps,
            chars_per_call=config.chars_per_call,
        )
        lane = Lane(name, model, chars, decoder, self.counters, self.clients.shares())
        with self._wakeup:
            self.lanes = [*self.lanes, lane]  # a new list: the engine thread may be reading
        return lane

    def retire_lane(self, lane: Lane) -> None:
        """The lane's model is replaced or unloaded: it takes no new request once its
        queued ones are in, and leaves the engine when its last row is done."""
        with self._wakeup:
            lane.retiring = True
            self._drop_retired()

    def lane_idle(self, lane: Lane) -> bool:
        with self._wakeup:
            return self._lane_empty(lane)

    def _lane_empty(self, lane: Lane) -> bool:  # with the lock held
        return (
            lane.decoder.size == 0
            and all(queued is not lane for queued, _ in self._queue)
            and all(scored is not lane for scored, _ in self.scores.items())
        )

    def _drop_retired(self) -> None:  # with the lock held
        if any(lane.retiring for lane in self.lanes):
            self.lanes = [
                lane for lane in self.lanes if not (lane.retiring and self._lane_empty(lane))
            ]

    @property
    def active(self) -> int:
        return sum(lane.decoder.size for lane in self.lanes)

    @property
    def queued(self) -> int:
        return len(self._queue) + self.scores.waiting

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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

    def submit(
        self,
        lane: Lane,
        params: GenerationParams,
        client: str | None = None,
        state: RecurrentState | None = None,
        return_state: bool = False,
    ) -> Job:
        """Queue a request of `client` (an address; None: not counted), continuing `state`
        if given (Job says how), keeping its final state if `return_state`. Raises
        ClientBusy past its quota, EngineBusy when the waiting queue is full."""
        job = Job(params, lane.chars, lane.name, client, state, return_state)
        with self._wakeup:
            free_rows = sum(lane.decoder.free for lane in self.lanes)
            if len(self._queue) >= self.config.max_queue + free_rows:
                raise EngineBusy(f"{len(self._queue)} requests already waiting")
            self._claim(job, client)
            self._queue.append((lane, job))
            self._wakeup.notify()
        return job

    def submit_score(
        self,
        lane: Lane,
        ids: list[int],
        top_n: int,
        client: str | None = None,
        state: RecurrentState | None = None,
    ) -> ScoreJob:
        """Queue a text to score (after `state`'s text, if given: ids then start with its
        last character); raises as `submit`. Nothing is made for it but the job (its ids,
        int32) until the engine starts it."""
        with self._wakeup:
            if self.queued >= self.config.max_queue:
                raise EngineBusy(f"{self.queued} requests already waiting")
            job = ScoreJob(np.asarray(ids, np.int32), top_n, lane.name, client, state)
            self._claim(job, client)
            if lane not in self.lanes:  # retired and dropped while this job was on its way
                self.lanes = [*self.lanes, lane]
            self.scores.add(lane, job)
            self._wakeup.notify()
        return job

    def _claim(self, job: EngineWork, client: str | None) -> None:  # with the lock held
        clients = self.clients
        clients.claim(client)  # raises ClientBusy past the client's quota

        def release() -> None:
            with self._wakeup:
                clients.release(client)
                if isinstance(job, Job) and job.admitted:
                    clients.row_freed(_holder(job))

        job.on_finish(release)

    # --- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._queue and not self._busy():
                    self.last_progress = time.monotonic()
                    self._wakeup.wait()
                if self._stopping:
                    break
                admitted = self._pop_admissible()
            for lane, job in admitted:
                lane.admit(job)
            started = time.perf_counter()
            self.streaming = step_lanes(self.lanes, self._pool, self.config.decode_threads)
            decoding = time.perf_counter() - started
            self._background(decoding)
            with self._wakeup:
                self._drop_retired()
            self.last_progress = time.monotonic()
        self._fail_everything("the service is shutting down")

    def _busy(self) -> bool:
        return bool(self.scores) or any(lane.decoder.size for lane in self.lanes)

    def _pop_admissible(self) -> list[tuple[Lane, Job]]:
        if not self._queue:
            return []
        admitted: list[tuple[Lane, Job]] = []
        free = {id(lane): lane.decoder.free for lane in self.lanes}
        waiting: collections.deque[tuple[Lane, Job]] = collections.deque()
        most = self.config.max_admit_per_step * self.config.block_steps
        while self._queue and len(admitted) < most:
            lane, job = self._queue.popleft()
            if id(lane) not in free:  # retired and dropped while this job was on its way
                self.lanes = [*self.lanes, lane]
                free[id(lane)] = lane.decoder.free
            if free[id(lane)] > 0:
                free[id(lane)] -= 1
                admitted.append((lane, job))
                job.admitted = True
                self.clients.row_taken(_holder(job))
            else:
                waiting.append((lane, job))  # its model is full; keep its place
        self._queue.extendleft(reversed(waiting))
        return admitted

    def _background(self, decoding_seconds: float) -> None:
        """Prefill and scoring, within the iteration's budget (shared when both wait)."""
        prefilling = any(lane.decoder.prefilling for lane in self.lanes)
        config = self.config
        budget = background_budget(
            decoding_seconds,
            self.streaming,
            config.prefill_share,
            config.idle_prefill_seconds,
            shared=prefilling and bool(self.scores),
        )
        if prefilling:  # the clients' credit counts only while streams decode
            prefill(self.lanes, budget, self.clients.credit if self.streaming else None)
        self.scores.start()
        if self.scores.running:
            self.scores.step(budget, self._pool)

    def _fail_everything(self, message: str) -> None:
        with self._wakeup:
            waiting = [job for _, job in self._queue]
            self._queue.clear()
        for lane in self.lanes:
            lane.fail_all(message)
        for job in waiting:
            if not job.done:
                self.counters.fail(job, message)
        self.scores.fail_all(message)


def _holder(job: Job) -> object:
    """Who holds the job's row, for the streams' pacing: its client, or the job alone."""
    return job.client if job.client is not None else ("request", id(job))
