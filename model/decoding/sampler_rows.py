"""The sampler chain's per-row arrays (model/decoding/sampler.py): each decoder row's
settings, history, random numbers and outputs, as numpy arrays the compiled chain reads.

The arrays come in three named groups, each a NamedTuple the compiled chain reads by
field name (inside compiled code a NamedTuple of arrays is a tuple, so a name costs
nothing; calls from Python pass plain tuples of the same arrays, `SamplerRows.arrays`):

    Settings  what the request asked for, written once when a request takes a row
    State     the row's history and random numbers, changed by each draw
    Out       what the last draw wrote

A new setting is a field of Settings, its array in `allocate` and its value in `write`,
beside each other; the chain reads it as `settings.<name>`.

A row's slice of every array is written once when a request takes the row (`assign`),
and from then on only by the compiled chain, except the random numbers, refilled here in
blocks from the request's own PCG64 generator (`refill`). `StepBlock` keeps the outputs of
several steps made in one compiled call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from model.decoding.output import ROW_WIDTH
from model.decoding.params import (
    MAX_REPEAT_LAST_N,
    MAX_STOP_CHARS,
    MAX_STOPS,
    GenerationParams,
)

UNIFORM_BLOCK = 64  # random numbers drawn per refill


class Settings(NamedTuple):
    """A row's sampler settings (first axis: rows; V: the vocabulary), as GenerationParams
    names them."""

    temperature: np.ndarray  # (R,) float64
    top_k: np.ndarray  # (R,) int64
    top_p: np.ndarray  # (R,) float64
    min_p: np.ndarray  # (R,) float64
    repetition_penalty: np.ndarray  # (R,) float64
    repeat_last_n: np.ndarray  # (R,) int64
    frequency_penalty: np.ndarray  # (R,) float64
    presence_penalty: np.ndarray  # (R,) float64
    bias: np.ndarray  # (R, V) float32: logit_bias, 0 for characters it leaves alone
    has_bias: np.ndarray  # (R,) bool: the bias link runs
    logprobs: np.ndarray  # (R,) int64: alternatives to record, -1 for no logprobs
    stops: np.ndarray  # (R, MAX_STOPS, MAX_STOP_CHARS) int32: stop strings' ids
    stop_lengths: np.ndarray  # (R, MAX_STOPS) int32: 0 for an unused slot
    stop_fail: np.ndarray  # (R, MAX_STOPS, MAX_STOP_CHARS) int32: their failure tables
    length: np.ndarray  # (R,) int64: characters to generate at most

    @classmethod
    def allocate(cls, rows: int, vocab: int) -> Settings:
        return cls(
            temperature=np.ones(rows),
            top_k=np.zeros(rows, np.int64),
            top_p=np.ones(rows),
            min_p=np.zeros(rows),
            repetition_penalty=np.ones(rows),
            repeat_last_n=np.zeros(rows, np.int64),
            frequency_penalty=np.zeros(rows),
            presence_penalty=np.zeros(rows),
            bias=np.zeros((rows, vocab), np.float32),
            has_bias=np.zeros(rows, np.bool_),
            logprobs=np.full(rows, -1, np.int64),
            stops=np.zeros((rows, MAX_STOPS, MAX_STOP_CHARS), np.int32),
            stop_lengths=np.zeros((rows, MAX_STOPS), np.int32),
            stop_fail=np.zeros((rows, MAX_STOPS, MAX_STOP_CHARS), np.int32),
            length=np.zeros(rows, np.int64),
        )

    def write(self, row: int, params: GenerationParams) -> None:
        """The request's settings into `row`."""
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


class State(NamedTuple):
    """A row's history and random numbers (first axis: rows), changed by each draw."""

    uniforms: np.ndarray  # (R, UNIFORM_BLOCK) float64: the next random numbers
    positions: np.ndarray  # (R,) int64: the next one to use
    generated: np.ndarray  # (R,) int64: characters written
    ring: np.ndarray  # (R, MAX_REPEAT_LAST_N) int32: the last characters, prime included
    pushed: np.ndarray  # (R,) int64: characters ever put in the ring
    window_counts: np.ndarray  # (R, V) int32: each char's count in the last repeat_last_n
    counts: np.ndarray  # (R, V) int32: each char's count in the generated text
    kmp: np.ndarray  # (R, MAX_STOPS) int32: how much of each stop string is matched
    regex_state: np.ndarray  # (R,) int32: the automaton pool's state, -1 without a regex

    @classmethod
    def allocate(cls, rows: int, vocab: int) -> State:
        return cls(
            uniforms=np.zeros((rows, UNIFORM_BLOCK)),
            positions=np.zeros(rows, np.int64),
            generated=np.zeros(rows, np.int64),
            ring=np.zeros((rows, MAX_REPEAT_LAST_N), np.int32),
            pushed=np.zeros(rows, np.int64),
            window_counts=np.zeros((rows, vocab), np.int32),
            counts=np.zeros((rows, vocab), np.int32),
            kmp=np.zeros((rows, MAX_STOPS), np.int32),
            regex_state=np.full(rows, -1, np.int32),
        )

    def start(self, row: int, repeat_last_n: int, prime: np.ndarray, regex_start: int) -> None:
        """A fresh history for `row`: its prime's last characters, nothing generated."""
        self.generated[row] = 0
        self.kmp[row] = 0
        self.counts[row] = 0
        self.window_counts[row] = 0
        window = prime[len(prime) - min(repeat_last_n, len(prime)) :]
        np.add.at(self.window_counts[row], window, 1)
        width = self.ring.shape[1]
        kept = np.arange(max(0, len(prime) - width), len(prime))
        self.ring[row, kept % width] = prime[kept]
        self.pushed[row] = len(prime)
        self.regex_state[row] = regex_start


class Out(NamedTuple):
    """What a row's last draw wrote (first axis: rows)."""

    ids: np.ndarray  # (R,) int64: the character drawn
    status: np.ndarray  # (R,) int64: RUNNING or how the row ended (sampler.py)
    held: np.ndarray  # (R,) int64: last characters that may begin a stop string
    # (R, ROW_WIDTH): the logprob record (model/decoding/output.py), for rows that ask
    logprob_records: np.ndarray

    @classmethod
    def allocate(cls, rows: int) -> Out:
        return cls(
            ids=np.zeros(rows, np.int64),
            status=np.zeros(rows, np.int64),
            held=np.zeros(rows, np.int64),
            logprob_records=np.zeros((rows, ROW_WIDTH)),
        )


class SamplerRows:
    """The arrays of `capacity` rows (model/decoding/sampler.py takes settings, state and
    out), and each row's random number generator."""

    def __init__(self, capacity: int, vocab_size: int):
        self.settings = Settings.allocate(capacity, vocab_size)
        self.state = State.allocate(capacity, vocab_size)
        self.out = Out.allocate(capacity)
        # The same arrays as plain tuples, for compiled calls made once per step or more:
        # numba types a plain tuple argument in C, a NamedTuple in Python (~7 µs a call for
        # these ~30 arrays). The chain names them again inside (sampler.py's `named`).
        self.arrays = (tuple(self.settings), tuple(self.state), tuple(self.out))
        self.generators: list[np.random.Generator | None] = [None] * capacity

    def assign(
        self, row: int, params: GenerationParams, prime: np.ndarray, regex_start: int = -1
    ) -> None:
        """Give `row` a request's settings and a fresh history (its prime's last chars)."""
        self.settings.write(row, params)
        self.state.start(row, params.repeat_last_n, prime, regex_start)
        generator = np.random.Generator(np.random.PCG64(params.seed))
        self.generators[row] = generator
        self.state.uniforms[row] = generator.random(UNIFORM_BLOCK)
        self.state.positions[row] = 0

    def release(self, row: int) -> None:
        self.generators[row] = None
        self.state.regex_state[row] = -1

    def refill(self, rows: np.ndarray, needed: int = 1) -> None:
        """Rows with fewer than `needed` random numbers left: what is left moves to the
        front and the rest of the block comes from the row's generator. The row reads the
        same stream in the same order however often it is topped up (PCG64 draws one
        output per number)."""
        uniforms, positions = self.state.uniforms, self.state.positions
        for row in rows[positions[rows] > UNIFORM_BLOCK - needed].tolist():
            generator = self.generators[row]
            assert generator is not None
            used = int(positions[row])
            uniforms[row, : UNIFORM_BLOCK - used] = uniforms[row, used:].copy()
            uniforms[row, UNIFORM_BLOCK - used :] = generator.random(used)
            positions[row] = 0


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
