"""One model's lane in the decoding engine (app/engine/engine.py): its BatchDecoder, the requests
in its rows, and the work the engine asks of it each iteration: a decoding step of the rows'
fair shares, and slices of prefill. A failure that belongs to one request fails that
request alone; one of a batched step fails the rows of that step.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from app.engine.clients import PrefillCredit, RowShares
from app.engine.jobs import EngineWork, Job
from model.decoding.decoder import BatchDecoder
from model.decoding.network_rows import kernel_supported
from model.decoding.sampler import FAILURES, RUNNING
from model.decoding.step import StepWeights, step_weights
from model.network import CharRNN

logger = logging.getLogger("charrnn.engine")

FAILED_MESSAGE = "generation failed; the server's log has the details"


@dataclass
class EngineCounters:
    """What the engine has done, for the metrics: shared by the engine and its lanes."""

    steps: int = 0
    chars_generated: int = 0
    jobs_failed: int = 0

    def fail(self, job: EngineWork, message: str) -> None:
        """End `job` as failed with `message` (what its client sees), and count it."""
        self.jobs_failed += 1
        job.finish(message)


class Lane:
    """One model's decoder inside the engine, and the requests in its rows."""

    def __init__(
        self,
        name: str,
        model: CharRNN,
        chars: tuple[str, ...],
        decoder: BatchDecoder,
        counters: EngineCounters,
        shares: RowShares,
    ):
        self.name = name
        self.model = model
        self.chars = chars
        self.decoder = decoder
        self.counters = counters
        self.retiring = False  # replaced or evicted: leaves the engine once it is empty
        self.fair = shares  # which decoding rows each step advances
        self._every_row_fair: np.ndarray | None = None  # see plan()
        self.row_seconds = 1e-4  # running estimate of a prefill row-character's cost
        self.score_seconds = 3e-5  # and of a scored character's (per text, batched)
        self._score_weights: StepWeights | None = None  # see score_weights()

    def score_weights(self) -> StepWeights | None:
        """The weights every text this lane scores shares (made once, on first use);
        None where the compiled kernel does not run (each text then reads the network)."""
        if self._score_weights is None and kernel_supported(self.model):
            self._score_weights = step_weights(self.model)
        return self._score_weights

    def admit(self, job: Job) -> None:
        """Give a job a row (its prime runs in later prefill slices)."""
        if job.cancelled:
            job.finish()
            return
        try:
            self.decoder.add(job.params, job, job.state)
        except Exception:
            logger.exception("admitting a request failed")
            self.counters.fail(job, FAILED_MESSAGE)

    def step(self, split: bool = True) -> int:
        """One decoding step of the rows' fair shares (BatchDecoder.step: up to block_steps
        characters a row, in one compiled call); → the rows stepped. split False keeps
        the step's compiled call on the calling thread (the engine runs several lanes' steps
        side by side)."""
        return self.record(self.kernel(self.plan(), split))

    def plan(self) -> np.ndarray:
        """The decoding rows this step advances: each client's fair share."""
        decoder = self.decoder
        decoding = decoder.decoding
        if len(decoding) <= 1 or decoding is self._every_row_fair:
            return decoding
        clients = [decoder.owners[row].client for row in decoding.tolist()]
        rows = self.fair.rows(decoding, clients)
        # The decoder replaces its `decoding` array whenever a row joins or leaves: while
        # it is the same array and every client was within its share, so is every step.
        self._every_row_fair = decoding if rows is decoding else None
        return rows

    def kernel(self, rows: np.ndarray, split: bool = True) -> np.ndarray | None:
        """The batched step itself; → the rows drawn, or None when it failed (its rows
        cannot be told apart, so every decoding row of the lane fails)."""
        try:
            return self.decoder.step(rows, split)
        except Exception:
            logger.exception("a decoding step failed; its requests fail")
            return None

    def record(self, rows: np.ndarray | None) -> int:
        """Move each drawn row's characters into its job; end the jobs that are done.
        → the rows stepped."""
        decoder = self.decoder
        if rows is None:
            for row in decoder.decoding.tolist():
                self.remove(row, FAILED_MESSAGE)
            return 0
        now = time.perf_counter()
        try:
            draws = decoder.draws(rows)
        except Exception:  # reading the step's results failed: its rows cannot go on
            logger.exception("reading a decoding step's results failed")
            for row in rows.tolist():
                self.remove(row, FAILED_MESSAGE)
            return 0
        self.counters.steps += max(draws.counts, default=0)
        self.counters.chars_generated += sum(draws.counts)
        for index, row in enumerate(draws.rows):
            job: Job = decoder.owners[row]
            try:
                status = draws.record(index, job.output)
            except Exception:
                logger.exception("recording a generated character failed")
                self.remove(row, FAILED_MESSAGE)
                continue
            if status in FAILURES:
                logger.warning("request failed: %s", FAILURES[status])
                self.remove(row, FAILURES[status])
                continue
            if job.stats.first_char_at is None:
                job.stats.first_char_at = now
            if status != RUNNING or job.cancelled:
                self.remove(row)
            else:
                job.wake()
        decoder.compact()
        return len(rows)

    def prefill_slice(self, max_rows: int, credit: PrefillCredit | None = None) -> int:
        """Up to `max_rows` primes read their next character (model/decoding/decoder.py),
        only those of clients whose `credit` allows it, which they then spend (None: every
        prime may). → the rows advanced."""
        decoder = self.decoder
        owners = decoder.owners
        verdicts: dict[object, bool] = {}  # each client's credit is asked once a slice

        def eligible(row: int) -> bool:
            client = owners[row].client
            if client not in verdicts:
                verdicts[client] = credit is None or credit.allows(client)
            return verdicts[client]

        started = time.perf_counter()
        try:
            rows, positions, done = decoder.prefill(max_rows, None if credit is None else eligible)
        except Exception:  # a batched prefill step: fail the rows it held
            logger.exception("a prefill step failed")
            decoding = set(decoder.decoding.tolist())
            for row in list(decoder.rows()):
                if row not in decoding:
                    self.remove(row, FAILED_MESSAGE)
            return 0
        if credit is not None:
            for client, chars in Counter(owners[row].client for row in rows.tolist()).items():
                credit.spend(client, chars)
        if len(rows):
            seconds = (time.perf_counter() - started) / len(rows)
            self.row_seconds = 0.8 * self.row_seconds + 0.2 * seconds
        for row, position in zip(rows.tolist(), positions.tolist(), strict=True):
            job: Job = decoder.owners[row]
            try:
                decoder.record_prompt(row, position, job.output)
            except Exception:
                logger.exception("recording a prompt log-probability failed")
                self.remove(row, FAILED_MESSAGE)
                continue
            if job.cancelled:
                self.remove(row)
        for row in done:
            job = decoder.owners[row]
            if job is not None and job.params.length == 0:
                decoder.finish_unsampled(row, job.output)
                self.remove(row)
        return len(rows)

    def remove(self, row: int, error: str | None = None) -> None:
        """Free a row and end its job (with `error`, as failed). A job that ended (not
        failed) and asked for its final state gets it first: one step of its row when its
        last character is still to read (BatchDecoder.final_state)."""
        job: Job = self.decoder.owners[row]
        if error is None and job.return_state and job.output.finish_reason is not None:
            try:
                job.final_state = self.decoder.final_state(row, job.output)
            except Exception:
                logger.exception("reading a request's final state failed")
                error = FAILED_MESSAGE
        self.decoder.remove(row)
        if error is None:
            job.finish()
        else:
            self.counters.fail(job, error)

    def fail_all(self, message: str) -> None:
        for row in list(self.decoder.rows()):
            self.remove(row, message)
