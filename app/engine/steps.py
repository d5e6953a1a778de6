"""What one iteration of the decoding engine (app/engine/engine.py) runs once the waiting requests
are admitted: the lanes' decoding steps, then background work within a time budget.

    step_lanes          one decoding step of every lane with decoding rows
    background_budget   the seconds prefill and scoring may take this iteration
    prefill             primes read their next characters, in batched slices
    score_rows          the texts being scored read their next slices, together
                        (model/scoring_rows.py)

A failure that belongs to one request fails it alone (app/engine/lane.py says how).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.engine.clients import PrefillCredit
from app.engine.jobs import ScoreJob
from app.engine.lane import FAILED_MESSAGE, Lane
from model.scoring_rows import read_rows

logger = logging.getLogger("charrnn.engine")


def step_lanes(lanes: list[Lane], pool: ThreadPoolExecutor | None, threads: int) -> int:
    """One decoding step of every lane with decoding rows (up to block_steps characters a
    row, app/engine/lane.py); → the rows stepped. One lane splits its step over the decoding
    threads; several run side by side, each lane on one thread and the threads' rows
    balanced, so a step costs one hand-off, not one per lane."""
    lanes = [lane for lane in lanes if len(lane.decoder.decoding)]
    if len(lanes) <= 1 or pool is None:
        return sum(lane.step() for lane in lanes)
    plans = [(lane, lane.plan()) for lane in lanes]
    buckets = balance([len(rows) for _, rows in plans], threads)
    drawn: list[np.ndarray | None] = [None] * len(plans)

    def run(bucket: list[int]) -> None:
        for index in bucket:
            lane, rows = plans[index]
            drawn[index] = lane.kernel(rows, split=False)

    helpers = [pool.submit(run, bucket) for bucket in buckets[1:] if bucket]
    run(buckets[0])
    for helper in helpers:
        helper.result()
    return sum(lane.record(rows) for (lane, _), rows in zip(plans, drawn, strict=True))


def balance(sizes: list[int], buckets: int) -> list[list[int]]:
    """Indices of `sizes` in `buckets` groups of nearly equal totals (the largest first,
    each into the lightest group so far)."""
    groups: list[list[int]] = [[] for _ in range(buckets)]
    loads = [0] * buckets
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(index)
        loads[lightest] += sizes[index]
    return groups


def background_budget(
    decoding_seconds: float,
    streaming: int,
    prefill_share: float,
    idle_seconds: float,
    shared: bool,
) -> float:
    """Seconds of background work this iteration: prefill_share of the engine's time while
    streams decode (the step took `decoding_seconds`), `idle_seconds` when none does;
    halved when prefill and scoring both wait (`shared`)."""
    budget = idle_seconds
    if streaming:
        budget = decoding_seconds * prefill_share / (1 - prefill_share)
    return budget / 2 if shared else budget


def prefill(lanes: list[Lane], budget: float, credit: PrefillCredit | None = None) -> None:
    """Primes read their next characters in batched slices for at most `budget` seconds
    (at least one slice per lane that has primes waiting), only those of clients whose
    `credit` allows it (the gate's prime credit; None: every prime)."""
    started = time.perf_counter()
    lanes = [lane for lane in lanes if lane.decoder.prefilling]
    while lanes:
        advanced = 0
        for lane in lanes:
            spent = time.perf_counter() - started
            max_rows = max(1, int((budget - spent) / lane.row_seconds))
            advanced += lane.prefill_slice(max_rows, credit)
        lanes = [lane for lane in lanes if lane.decoder.prefilling]
        if not advanced or time.perf_counter() - started >= budget:
            return  # (nothing advanced: every waiting prime's client is out of credit)


def score_rows(
    lane: Lane, jobs: list[ScoreJob], budget: float, pool: ThreadPoolExecutor | None = None
) -> list[ScoreJob]:
    """The lane's texts being scored read their next slices, in one batched pass (each
    slice sized so the pass takes about `budget` seconds; with a `pool`, half the texts in
    a pass of their own on its thread, as a lane's step splits its rows); → the jobs that
    have ended (scored, cancelled, or failed: a pass that fails fails the texts it read)."""
    ended = [job for job in jobs if job.cancelled]
    for job in ended:
        job.finish()
    running = [job for job in jobs if not job.cancelled]
    if not running:
        return ended
    scorers = [job.scorer for job in running if job.scorer is not None]
    per_text = budget / (lane.score_seconds * len(scorers))
    started = time.perf_counter()
    try:
        weights = lane.score_weights()
        max_chars = max(16, min(4096, int(per_text)))
        if weights is None:  # no compiled kernel for this model: one text at a time
            chars = sum(scorer.advance(max_chars) for scorer in scorers)
        elif pool is None or len(scorers) < 2:
            chars = read_rows(scorers, weights, max_chars)
        else:
            # Each text's numbers are its own whatever its batch (model/scoring_rows.py):
            # the halves run side by side (the kernel releases the GIL).
            half = len(scorers) // 2
            other = pool.submit(read_rows, scorers[half:], weights, max_chars)
            chars = read_rows(scorers[:half], weights, max_chars) + other.result()
    except Exception:
        logger.exception("scoring texts failed")
        for job in running:
            lane.counters.fail(job, FAILED_MESSAGE)
        return ended + running
    if chars:
        seconds = (time.perf_counter() - started) / chars
        lane.score_seconds = 0.8 * lane.score_seconds + 0.2 * seconds
    for job in running:
        if job.scorer is not None and job.scorer.done:
            job.finish()
            ended.append(job)
    return ended
