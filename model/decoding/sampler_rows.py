"""The sampler chain's per-row arrays (model/decoding/sampler.py): each decoder row's
settings, history, random numbers and outputs, as numpy arrays the compiled chain reads.

A row's slice of every array is written once when a request takes the row (`assign`),
and from then on only by the compiled chain, except the random numbers, refilled here in
blocks from the request's own PCG64 generator (`refill`). `StepBlock` keeps the outputs of
several steps made in one compiled call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.decoding.output import ROW_WIDTH
from model.decoding.params import MAX_REPEAT_LAST_N, MAX_STOP_CHARS, MAX_STOPS

UNIFORM_BLOCK = 64  # random numbers drawn per refill


class SamplerRows:
    def __init__(self, capacity: int, vocab_size: int):
        rows, vocab = capacity, vocab_size
        # settings
        self.temperature = np.ones(rows)
        self.top_k = np.zeros(rows, np.int64)
        self.top_p = np.ones(rows)
        self.min_p = np.zeros(rows)
        self.repetition_penalty = np.ones(rows)
        self.repeat_last_n = np.zeros(rows, np.int64)
        self.frequency_penalty = np.zeros(rows)
        self.presence_penalty = np.zeros(rows)
        self.bias = np.zeros((rows, vocab), np.float32)
        self.has_bias = np.zeros(rows, np.bool_)
        self.logprobs = np.full(rows, -1, np.int64)
        self.stops = np.zeros((rows, MAX_STOPS, MAX_STOP_CHARS), np.int32)
        self.stop_lengths = np.zeros((rows, MAX_STOPS), np.int32)
        self.stop_fail = np.zeros((rows, MAX_STOPS, MAX_STOP_CHARS), np.int32)
        self.length = np.zeros(rows, np.int64)
        # state
        self.uniforms = np.zeros((rows, UNIFORM_BLOCK))
        self.positions = np.zeros(rows, np.int64)
        self.generated = np.zeros(rows, np.int64)
        self.ring = np.zeros((rows, MAX_REPEAT_LAST_N), np.int32)
        self.pushed = np.zeros(rows, np.int64)
        self.window_counts = np.zeros((rows, vocab), np.int32)
        self.counts = np.zeros((rows, vocab), np.int32)
        self.kmp = np.zeros((rows, MAX_STOPS), np.int32)
        self.regex_state = np.full(rows, -1, np.int32)
        # outputs of the last draw
        self.ids = np.zeros(rows, np.int64)
        self.status = np.zeros(rows, np.int64)
        self.held = np.zeros(rows, np.int64)
        # (rows, ROW_WIDTH): a row's logprob record, for requests that ask (else stale)
        self.logprob_records = np.zeros((rows, ROW_WIDTH))
        self.generators: list[np.random.Generator | None] = [None] * rows
        # What the compiled chain takes, in its order (model/decoding/sampler.py).
        self.settings = (
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repetition_penalty,
            self.repeat_last_n,
            self.frequency_penalty,
            self.presence_penalty,
            self.bias,
            self.has_bias,
            self.logprobs,
            self.stops,
            self.stop_lengths,
            self.stop_fail,
            self.length,
        )
        self.state = (
            self.uniforms,
            self.positions,
            self.generated,
            self.ring,
            self.pushed,
            self.window_counts,
            self.counts,
            self.kmp,
            self.regex_state,
        )
        self.out = (
            self.ids,
            self.status,
            self.held,
            self.logprob_records,
        )

    def assign(self, row: int, params, prime: np.ndarray, regex_start: int = -1) -> None:
        """Give `row` a request's settings and a fresh history (its prime's last chars)."""
        self.temperature[row] = params.temperature
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.repetition_penalty[row] = params.repetition_penalty
        self.repeat_last_n[row] = params.repeat_last_n
        self.frequency_penalty[row] = params.frequency_penalty
        self.presence_penalty[row] = params.presence_penalty
        self.bias[row] = 0.0
        for char, bias in params.logit_bias:
            self.bias[row, char] = bias
        self.has_bias[row] = bool(params.logit_bias)
        self.logprobs[row] = -1 if params.logprobs is None else params.logprobs
        self.stop_lengths[row] = 0
        for index, stop in enumerate(params.stop):
            self.stops[row, index, : len(stop)] = stop
            self.stop_lengths[row, index] = len(stop)
            self.stop_fail[row, index, : len(stop)] = failure_table(stop)
        self.length[row] = params.length
        self.generated[row] = 0
        self.kmp[row] = 0
        self.counts[row] = 0
        self.window_counts[row] = 0
        window = prime[len(prime) - min(params.repeat_last_n, len(prime)) :]
        np.add.at(self.window_counts[row], window, 1)
        width = self.ring.shape[1]
        kept = np.arange(max(0, len(prime) - width), len(prime))
        self.ring[row, kept % width] = prime[kept]
        self.pushed[row] = len(prime)
        self.regex_state[row] = regex_start
        generator = np.random.Generator(np.random.PCG64(params.seed))
        self.generators[row] = generator
        self.uniforms[row] = generator.random(UNIFORM_BLOCK)
        self.positions[row] = 0

    def release(self, row: int) -> None:
        self.generators[row] = None
        self.regex_state[row] = -1

    def refill(self, rows: np.ndarray, needed: int = 1) -> None:
        """Rows with fewer than `needed` random numbers left: what is left moves to the
        front and the rest of the block comes from the row's generator. The row reads the
        same stream in the same order however often it is topped up (PCG64 draws one
        output per number)."""
        for row in rows[self.positions[rows] > UNIFORM_BLOCK - needed].tolist():
            generator = self.generators[row]
            assert generator is not None
            used = int(self.positions[row])
            self.uniforms[row, : UNIFORM_BLOCK - used] = self.uniforms[row, used:].copy()
            self.uniforms[row, UNIFORM_BLOCK - used :] = generator.random(used)
            self.positions[row] = 0


@dataclass
class StepBlock:
    """What one compiled call of up to `steps` decoding steps wrote for each row: the
    sampler's outputs after each step (its `out`), and how many steps the row took (it
    stops at the step that ends it). Rows: the decoder's slots."""

    ids: np.ndarray  # (steps, rows) int64
    status: np.ndarray  # (steps, rows) int64
    held: np.ndarray  # (steps, rows) int64
    records: np.ndarray  # (steps, rows, ROW_WIDTH): logprob records (rows that ask)
    counts: np.ndarray  # (rows,) int64: steps taken in the last call

    @classmethod
    def empty(cls, steps: int, rows: int) -> StepBlock:
        return cls(
            np.zeros((steps, rows), np.int64),
            np.zeros((steps, rows), np.int64),
            np.zeros((steps, rows), np.int64),
            np.zeros((steps, rows, ROW_WIDTH)),
            np.zeros(rows, np.int64),
        )

    @property
    def steps(self) -> int:
        return self.ids.shape[0]

    def first(self, steps: int) -> StepBlock:
        """The block of a call of fewer steps: views of the first `steps` (contiguous, as
        the steps are the outer axis), the counts shared."""
        if steps == self.steps:
            return self
        return StepBlock(
            self.ids[:steps],
            self.status[:steps],
            self.held[:steps],
            self.records[:steps],
            self.counts,
        )

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled call takes (model/decoding/network_rows.py)."""
        return (self.ids, self.status, self.held, self.records, self.counts)


def failure_table(pattern: tuple[int, ...]) -> list[int]:
    """Knuth-Morris-Pratt: entry i is the length of the longest proper prefix of
    pattern[: i + 1] that is also its suffix."""
    table = [0] * len(pattern)
    matched = 0
    for i in range(1, len(pattern)):
        while matched > 0 and pattern[i] != pattern[matched]:
            matched = table[matched - 1]
        if pattern[i] == pattern[matched]:
            matched += 1
        table[i] = matched
    return table
