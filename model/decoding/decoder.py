"""Batched decoding: many independent requests advanced together, one character per step.

Each request takes a row (a slot) and goes through two phases:

    add ──▶ prefill: its prime runs through the network, a slice at a time, batched with
            other rows' primes (or its state comes from the prime cache at once)
        ──▶ decode: each `step` draws one character per row with its own sampler chain and
            feeds it back, until its length, a stop string or its regex ends it
        ──▶ remove

A seeded request produces the same text whether it is decoded alone or beside any number
of others, in any slot, prefilled in any slices, cached or not:

- Its random numbers come from its own PCG64 generator (numpy), drawn in blocks.
- Its network numbers do not depend on the other rows (model/decoding/network_rows.py).
- Its sampler chain reads its own row of every array (model/decoding/sampler.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.decoding.automaton import AutomatonPool
from model.decoding.network_rows import KernelRows, TorchRows, kernel_supported
from model.decoding.output import RECORD_BYTES, RowOutput
from model.decoding.params import GenerationParams
from model.decoding.prime_cache import PrimeCache
from model.decoding.sampler import (
    FAILURES,
    FINISH_REASONS,
    FINISHED_STOP,
    RUNNING,
    prompt_logprob,
)
from model.decoding.sampler_rows import SamplerRows
from model.network import CharRNN

BACKENDS = ("auto", "kernel", "torch")


class BatchDecoder:
    """Decoding state for up to `capacity` requests of one model.

    backend: "kernel" (the compiled CPU LSTM step), "torch" (any device or cell), or
    "auto": the kernel where it applies (a float32 LSTM on the CPU), torch elsewhere.
    threads: how many threads the kernel may split a step's rows over.
    prime_cache_bytes: memory for the states after recent primes (0: no cache).
    """

    def __init__(
        self,
        model: CharRNN,
        capacity: int,
        *,
        threads: int = 1,
        backend: str = "auto",
        prime_cache_bytes: int = 0,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        model = model.eval()
        use_kernel = backend == "kernel" or (backend == "auto" and kernel_supported(model))
        self.backend = "kernel" if use_kernel else "torch"
        self.network = (
            KernelRows(model, capacity, threads) if use_kernel else TorchRows(model, capacity)
        )
        self.vocab_size = model.config.vocab_size
        self.capacity = capacity
        self.sampler = SamplerRows(capacity, self.vocab_size)
        self.automata = AutomatonPool(self.vocab_size)
        self.cache = PrimeCache(prime_cache_bytes) if prime_cache_bytes else None
        self.owners: list[Any] = [None] * capacity
        self.params: list[GenerationParams | None] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))  # a stack: low slots are reused first
        self._primes: dict[int, np.ndarray] = {}  # prefilling rows → their prime ids
        self._prime_pos = np.zeros(capacity, np.int64)  # characters of the prime read so far
        self._decoding = np.zeros(0, np.int64)  # rows in the decode phase, ascending
        self._compile()

    def _compile(self) -> None:
        """Compile the sampler (or load it from numba's cache) now, not on a first request."""
        none = np.zeros(0, np.int64)
        self.network.sample_and_advance(none, self.sampler, self.automata.tables)
        prompt_logprob(0, self.network.logits, 0, 0, self.sampler.out)

    # --- rows ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Rows taken (prefilling or decoding)."""
        return self.capacity - len(self._free)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def decoding(self) -> np.ndarray:
        return self._decoding

    @property
    def prefilling(self) -> int:
        return len(self._primes)

    def prime_chars_left(self) -> int:
        return sum(len(p) for p in self._primes.values()) - int(
            sum(self._prime_pos[row] for row in self._primes)
        )

    def add(self, params: GenerationParams, owner: Any = None) -> int:
        """Give a request a row; its prime is prefilled by later `prefill` calls (at once
        when the prime cache holds it). Raises ValueError for ids outside the vocabulary
        and RuntimeError when every row is taken."""
        if not self._free:
            raise RuntimeError("decoder is full")
        prime = np.asarray(params.prime, np.int64)
        stops = [char for stop in params.stop for char in stop]
        ids = np.array([*params.prime, *stops, *(char for char, _ in params.logit_bias)])
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError("prime, stop and logit_bias ids must be in [0, vocab_size)")
        regex_start = self.automata.acquire(params.regex) if params.regex is not None else -1
        row = self._free.pop()
        try:
            self.sampler.assign(row, params, prime, regex_start)
        except BaseException:
            self._free.append(row)
            if params.regex is not None:
                self.automata.release(params.regex)
            raise
        self.owners[row], self.params[row] = owner, params
        cached = None
        # A length-0 request ends when `prefill` reports its prime done: it takes that path.
        if self.cache is not None and not params.prompt_logprobs and params.length > 0:
            cached = self.cache.get(params.prime)
        if cached is not None:
            self.network.restore(row, cached)
            self._start_decoding([row])
        else:
            self.network.reset(row)
            self._primes[row] = prime
            self._prime_pos[row] = 0
        return row

    def remove(self, row: int) -> None:
        """Free a row (finished, failed or cancelled), whatever its phase."""
        params = self.params[row]
        if params is None:
            raise IndexError(f"row {row} is not taken")
        if params.regex is not None:
            self.automata.release(params.regex)
        self._primes.pop(row, None)
        self._decoding = self._decoding[self._decoding != row]
        self.sampler.release(row)
        self.owners[row] = self.params[row] = None
        self._free.append(row)

    def rows(self) -> Iterator[int]:
        """Every taken row."""
        taken = set(range(self.capacity)) - set(self._free)
        return iter(sorted(taken))

    def _start_decoding(self, rows: list[int]) -> None:
        self._decoding = np.union1d(self._decoding, np.asarray(rows, np.int64))

    # --- prefill ------------------------------------------------------------------------
    def prefill(self, max_rows: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One slice of prefill: up to `max_rows` prefilling rows, those with the fewest
        prime characters left first, each read their next prime character in one batched
        step. → (rows advanced, the position each read, rows whose prime is done: now
        decoding). For rows whose request asked for prompt logprobs, the next prime
        character's log-probability is left in the sampler's outputs (chosen, top_*)."""
        if not self._primes or max_rows < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), []
        waiting = sorted(
            self._primes, key=lambda row: (len(self._primes[row]) - self._prime_pos[row], row)
        )[:max_rows]
        rows = np.asarray(waiting, np.int64)
        positions = self._prime_pos[rows].copy()
        ids = np.array(
            [self._primes[row][pos] for row, pos in zip(waiting, positions, strict=True)]
        )
        self.network.advance(rows, ids)
        self._prime_pos[rows] += 1
        done = []
        for row, position in zip(waiting, positions.tolist(), strict=True):
            prime = self._primes[row]
            params = self.params[row]
            assert params is not None
            if params.prompt_logprobs and position + 1 < len(prime):
                count = params.logprobs or 0
                prompt_logprob(
                    row, self.network.logits, prime[position + 1], count, self.sampler.out
                )
            if position + 1 == len(prime):
                del self._primes[row]
                done.append(row)
                if self.cache is not None:
                    self.cache.put(params.prime, self.network.snapshot(row))
        if done:
            self._start_decoding(done)
        return rows, positions, done

    # --- decode -------------------------------------------------------------------------
    def step(self, rows: np.ndarray | None = None, split: bool = True) -> np.ndarray:
        """Draw one character for every decoding row (or those of `rows`) and feed it back
        (rows that finish with it are not advanced). → the rows drawn; their results are in
        the sampler's outputs: ids, status (model/decoding/sampler.py), held, logprobs.
        split False keeps the step on the calling thread (the caller runs several decoders'
        steps side by side)."""
        rows = self._decoding if rows is None else rows
        if len(rows) == 0:
            return rows
        running = self.network.sample_and_advance(rows, self.sampler, self.automata.tables, split)
        self.sampler.refill(running)
        return rows

    def draws(self, rows: np.ndarray) -> Draws:
        """The last step's results for `rows`, read out in bulk (a few array-to-list
        conversions, not a numpy access per row and field)."""
        sampler = self.sampler
        counts = sampler.logprobs[rows].tolist()
        asked = bool(counts) and max(counts) >= 0  # a list's max: no numpy call per step
        return Draws(
            self,
            rows.tolist(),
            sampler.ids[rows].tolist(),
            sampler.held[rows].tolist(),
            sampler.status[rows].tolist(),
            counts,
            self.sampler.logprob_records[rows].tobytes() if asked else b"",
        )

    def record(self, row: int, output: RowOutput) -> int:
        """Move the row's last draw into `output` (its char, logprobs, hold-back, and
        how it ended). → its status; for a failure, FAILURES[status] says why."""
        return self.draws(np.array([row], np.int64)).record(0, output)

    def record_prompt(self, row: int, position: int, output: RowOutput) -> None:
        """After `prefill` read prime[position]: the next prime char's logprob, if asked."""
        params = self.params[row]
        if params is not None and params.prompt_logprobs and position + 1 < len(params.prime):
            output.prompt_logprobs.append_row(self.sampler.logprob_records[row].tobytes())

    def finish_unsampled(self, row: int, output: RowOutput) -> None:
        """A request with length 0 ends once its prime has run."""
        output.finish("length")
        if self.params[row].regex is not None:  # type: ignore[union-attr]
            output.regex_complete = self.regex_complete(row)

    def regex_complete(self, row: int) -> bool:
        """Whether the row's output so far is a whole match of its regex."""
        state = self.sampler.regex_state[row]
        return bool(state >= 0 and self.automata.final[state])

    def compact(self) -> None:
        """Housekeeping between steps: drop automata no row uses any more."""
        self.automata.compact(self.sampler.regex_state)


@dataclass
class Draws:
    """One step's results for some rows, as lists (BatchDecoder.draws)."""

    decoder: BatchDecoder
    rows: list[int]
    ids: list[int]
    held: list[int]
    status: list[int]
    counts: list[int]  # logprobs asked for (-1: none)
    logprobs: bytes  # the rows' logprob records, when any row asked (else empty)

    def record(self, index: int, output: RowOutput) -> int:
        """Move the index-th row's draw into `output`. → its status (FAILURES: why not)."""
        status = self.status[index]
        if status in FAILURES:
            return status
        char = self.ids[index]
        if self.counts[index] >= 0:
            start = index * RECORD_BYTES
            output.logprobs.append_row(self.logprobs[start : start + RECORD_BYTES])
        output.append(char, self.held[index])
        if status != RUNNING:
            stop_length = self.held[index] if status == FINISHED_STOP else 0
            output.finish(FINISH_REASONS[status], stop_length)
            row = self.rows[index]
            if self.decoder.params[row].regex is not None:  # type: ignore[union-attr]
                output.regex_complete = self.decoder.regex_complete(row)
        return status
