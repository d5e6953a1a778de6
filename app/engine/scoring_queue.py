"""The engine's texts to score: those waiting, by client, and those being scored.

A text waits holding only its ids (the queue bound and its client's quota were checked
when it was submitted). Up to `score_rows` texts are scored at once, their Scorers and
result arrays made when they start; they start round-robin by client, not in arrival
order, and a client with no text running may start one beyond them, so one client's queue
of long texts never holds another's short one behind it. The texts being scored read
their next slices together, one batched pass per model (model/scoring_rows.py), within
the budget the engine gives its background work.

The engine's thread calls start() and step(); submitting threads call add(). Each takes
the engine's lock where it touches the queues (`lock`), never while a Scorer is made or a
text is read.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from app.engine.config import EngineConfig
from app.engine.jobs import ScoreJob
from app.engine.lane import FAILED_MESSAGE, EngineCounters, Lane
from app.engine.steps import score_rows
from model.scoring import Scorer

logger = logging.getLogger("charrnn.engine")

Item = tuple[Lane, ScoreJob]


class ScoringQueue:
    def __init__(self, config: EngineConfig, counters: EngineCounters, lock: threading.Condition):
        self.config = config
        self.counters = counters
        self._lock = lock
        # Waiting texts by holder, in the order the holders came (the round-robin of
        # start()), and the texts being scored.
        self._waiting: dict[object, collections.deque[Item]] = {}
        self.running: list[Item] = []

    def __bool__(self) -> bool:
        """Whether any text waits or is being scored."""
        return bool(self.running or self._waiting)

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def items(self) -> list[Item]:  # with the lock held
        """Every text, being scored or waiting, with its lane."""
        return self.running + [item for queue in self._waiting.values() for item in queue]

    def add(self, lane: Lane, job: ScoreJob) -> None:  # with the lock held
        self._waiting.setdefault(holder_of(job), collections.deque()).append((lane, job))

    def start(self) -> None:
        """Start waiting texts, one per client in turn, while fewer than score_rows run (and
        each client with none running, even beyond). Cancelled waiting texts leave first."""
        with self._lock:
            for holder, queue in list(self._waiting.items()):
                for item in [item for item in queue if item[1].cancelled]:
                    queue.remove(item)
                    item[1].finish()
                if not queue:
                    del self._waiting[holder]
        while True:
            with self._lock:
                item = self._next()
                if item is None:
                    return
            lane, job = item
            if job.cancelled:
                job.finish()
                continue
            try:
                job.scorer = Scorer(
                    lane.model, job.ids, job.top_n, state=job.state, weights=lane.score_weights()
                )
            except Exception:
                logger.exception("starting a text to score failed")
                self.counters.fail(job, FAILED_MESSAGE)
                continue
            self.running.append(item)

    def _next(self) -> Item | None:  # with the lock held
        """The next text to start, taken from its holder's queue (the holder goes to the
        back of the round), or None."""
        running = {holder_of(job) for _, job in self.running}
        room = len(self.running) < self.config.score_rows
        holder = next(
            (
                holder
                for holder in self._waiting
                # beyond the limit: a client's first (work of no client waits)
                if room or (isinstance(holder, str) and holder not in running)
            ),
            None,
        )
        if holder is None:
            return None
        queue = self._waiting.pop(holder)
        item = queue.popleft()
        if queue:
            self._waiting[holder] = queue
        return item

    def step(self, budget: float, pool: ThreadPoolExecutor | None) -> None:
        """One batched pass per lane over its texts being scored, sharing `budget`."""
        lanes = {id(lane): lane for lane, _ in self.running}
        ended: set[int] = set()
        for lane in lanes.values():
            jobs = [job for owner, job in self.running if owner is lane]
            ended.update(map(id, score_rows(lane, jobs, budget / len(lanes), pool)))
        with self._lock:
            self.running = [(lane, job) for lane, job in self.running if id(job) not in ended]

    def fail_all(self, message: str) -> None:
        with self._lock:
            items = self.items()
            self._waiting.clear()
            self.running = []
        for _, job in items:
            self.counters.fail(job, message)


def holder_of(job: ScoreJob) -> object:
    """Whose turn a text to score waits for: its client, or the job alone."""
    return job.client if job.client is not None else ("request", id(job))
