"""Batched decoding: many independent requests advanced together, one character per step
and several steps per call.

Each request takes a row (a slot) and goes through two phases:

    add ──▶ prefill: its prime runs through the network, a slice at a time, batched with
            other rows' primes (or its state comes from the prime cache at once)
        ──▶ decode: each `step` draws up to `block_steps` characters per row, one at a time
            with its own sampler chain, each fed back, until its length, a stop string or
            its regex ends it
        ──▶ remove

A request may start from a text's recurrent state (model/state.py) instead of zeros: its
prime then begins with that text's last character, which the state has read already, so
prefill takes that character's logits from the state instead of reading it. Once the
request has ended, `final_state` gives the state after its own whole text.

A seeded request produces the same text whether it is decoded alone or beside any number
of others, in any slot, prefilled in any slices, cached or not, and whether its earlier
text came as a prime or as a state:

- Its random numbers come from its own PCG64 generator (numpy), drawn in blocks.
- Its network numbers do not depend on the other rows (model/decoding/network_rows.py).
- Its sampler chain reads its own row of every array (model/decoding/sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    FINISHED_REGEX_STOP,
    FINISHED_STOP,
    NO_CHARACTER,
    RUNNING,
    prompt_logprob,
)
from model.decoding.sampler_rows import UNIFORM_BLOCK, SamplerRows, StepBlock
from model.network import CharRNN
from model.state import RecurrentState, text_state

BACKENDS = ("auto", "kernel", "torch")
# Characters a row draws per `step` call, at most (the service's default too: its
# DECODE_BLOCK_STEPS reads this). Between calls the engine's Python runs (recording the
# characters, admitting requests) and takes the GIL back from the HTTP event loop each
# time; several draws a call pay that once for all of them (docs/decisions.md, "Several
# characters per decoding call"), for a few ms more before a row is reused.
BLOCK_STEPS = 32


class BatchDecoder:
    """Decoding state for up to `capacity` requests of one model.

    backend: "kernel" (the compiled CPU LSTM step), "torch" (any device or cell), or
    "auto": the kernel where it applies (a float32 LSTM on the CPU), torch elsewhere.
    threads: how many threads the kernel may split a step's rows over.
    prime_cache_bytes: memory for the states after recent primes (0: no cache).
    block_steps: characters each row draws per `step` call (fewer if it ends first), in
    one compiled call: the Python around a call is paid once for all of them.
    chars_per_call: with it, a call of many rows takes fewer steps, about this many
    characters in all (at least one step, at most block_steps): a call's time, which a
    new request waits for, stays about the same however many rows decode.
    """

    def __init__(
        self,
        model: CharRNN,
        capacity: int,
        *,
        threads: int = 1,
        backend: str = "auto",
        prime_cache_bytes: int = 0,
        block_steps: int = BLOCK_STEPS,
        chars_per_call: int | None = None,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 1 <= block_steps <= UNIFORM_BLOCK:
            raise ValueError(f"block_steps must be in [1, {UNIFORM_BLOCK}], got {block_steps}")
        if chars_per_call is not None and chars_per_call < 1:
            raise ValueError(f"chars_per_call must be at least 1, got {chars_per_call}")
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
        self.chars_per_call = chars_per_call
        self._blocks = StepBlock.empty(block_steps, capacity)  # the longest call's
        self.block = self._blocks  # the last call's (its first steps)
        self.automata = AutomatonPool(self.vocab_size)
        self.cache = PrimeCache(prime_cache_bytes) if prime_cache_bytes else None
        self.owners: list[Any] = [None] * capacity
        self.params: list[GenerationParams | None] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))  # a stack: low slots are reused first
        self._primes: dict[int, np.ndarray] = {}  # prefilling rows → their prime ids
        self._prime_pos = np.zeros(capacity, np.int64)  # characters of the prime read so far
        self._decoding = np.zeros(0, np.int64)  # rows in the decode phase, ascending
        self._states: dict[int, RecurrentState] = {}  # rows that started from a state
        self._final: dict[int, RecurrentState] = {}  # ended rows' final states, once taken
        self._compile()

    def _compile(self) -> None:
        """Compile the sampler (or load it from numba's cache) now, not on a first request."""
        none = np.zeros(0, np.int64)
        self.network.sample_and_advance(none, self.sampler, self.automata.tables, self.block)
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

    def add(
        self, params: GenerationParams, owner: Any = None, state: RecurrentState | None = None
    ) -> int:
        """Give a request a row; its prime is prefilled by later `prefill` calls (at once
        when the prime cache holds it). With a `state` (a decoded, validated token of this
        model) the row starts from it, and params.prime must be state.prime(the new
        text's ids). Raises ValueError for ids outside the vocabulary or a prime that does
        not continue the state, and RuntimeError when every row is taken."""
        if not self._free:
            raise RuntimeError("decoder is full")
        prime = history = np.asarray(params.prime, np.int64)
        if state is not None:
            if params.prime[0] != state.last:
                raise ValueError("a prime after a state starts with its last character")
            history = state.history(prime)  # the repetition window reads the text's tail
        stops = [char for stop in params.stop for char in stop]
        ids = np.array([*params.prime, *stops, *(char for char, _ in params.logit_bias)])
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError("prime, stop and logit_bias ids must be in [0, vocab_size)")
        regex_start = self.automata.acquire(params.regex) if params.regex is not None else -1
        row = self._free.pop()
        try:
            self.sampler.assign(row, params, history, regex_start)
        except BaseException:
            self._free.append(row)
            if params.regex is not None:
                self.automata.release(params.regex)
            raise
        self.owners[row], self.params[row] = owner, params
        cached = None
        # A length-0 request ends when `prefill` reports its prime done: it takes that path.
        # The cache holds states after primes read from zeros: not for a row with a state.
        if (
            self.cache is not None
            and not params.prompt_logprobs
            and params.length > 0
            and state is None
        ):
            cached = self.cache.get(params.prime)
        if cached is not None:
            self.network.restore(row, cached)
            self._start_decoding([row])
            return row
        if state is None:
            self.network.reset(row)
        else:
            self.network.load_state(row, state.arrays)
            self._states[row] = state
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
        self._states.pop(row, None)
        self._final.pop(row, None)
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
    def prefill(
        self, max_rows: int, eligible: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One slice of prefill: up to `max_rows` prefilling rows (those `eligible` allows),
        the fewest prime characters left first, each read their next prime character in one
        batched step. → (rows advanced, the position each read, rows whose prime is done:
        now decoding). For rows whose request asked for prompt logprobs, the next prime
        character's log-probability is left in the sampler's outputs (chosen, top_*)."""
        candidates = [row for row in self._primes if eligible is None or eligible(row)]
        if not candidates or max_rows < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), []
        waiting = sorted(
            candidates, key=lambda row: (len(self._primes[row]) - self._prime_pos[row], row)
        )[:max_rows]
        rows = np.asarray(waiting, np.int64)
        positions = self._prime_pos[rows].copy()
        ids = np.array(
            [self._primes[row][pos] for row, pos in zip(waiting, positions, strict=True)]
        )
        if self._states:
            # A continued text's first prime character (its last one) is in its state.
            given = np.array(
                [p == 0 and r in self._states for r, p in zip(waiting, positions, strict=True)]
            )
            self.network.advance(rows[~given], ids[~given])
            self.network.load_logits(rows[given])
        else:
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
                if self.cache is not None and row not in self._states:
                    self.cache.put(params.prime, self.network.snapshot(row))
        if done:
            self._start_decoding(done)
        return rows, positions, done

    # --- state ----------------------------------------------------------------------------
    def final_state(self, row: int, output: RowOutput) -> RecurrentState:
        """The state after the row's whole text once it has ended (finished, not failed),
        taken before `remove`: the text it started from (its state's, if any), its prime,
        and every character it wrote (`output.ids`, a stop string included). The decoding
        step never reads a row's last draw, so that character is read here (once: the
        state is kept until the row is removed); a draw that ended the row at a regex's
        end wrote nothing, and the character before it has been read."""
        params = self.params[row]
        if params is None:
            raise IndexError(f"row {row} is not taken")
        if output.finish_reason is None or row in self._primes:
            raise RuntimeError(f"row {row} has not finished")
        if row not in self._final:
            if output.ids and self.sampler.out.status[row] != FINISHED_REGEX_STOP:
                self.network.advance(np.array([row]), np.array([output.ids[-1]]))
            arrays = self.network.read_state(row)
            before = self._states.get(row)
            self._final[row] = text_state(arrays, before, params.prime, output.ids)
        return self._final[row]

    # --- decode -------------------------------------------------------------------------
    def step(self, rows: np.ndarray | None = None, split: bool = True) -> np.ndarray:
        """Draw up to steps_for(rows) characters for every decoding row (or those of `rows`),
        each fed back; a row stops at the character that ends it. → the rows drawn; their
        results are in `self.block` (read them with `draws`). split False keeps the call on
        the calling thread (the caller runs several decoders' steps side by side)."""
        rows = self._decoding if rows is None else rows
        if len(rows) == 0:
            return rows
        block = self.block = self._blocks.first(self.steps_for(len(rows)))
        self.sampler.refill(rows, block.steps)  # enough random numbers for every step
        self.network.sample_and_advance(rows, self.sampler, self.automata.tables, block, split)
        return rows

    def steps_for(self, rows: int) -> int:
        """Steps of a call of `rows` rows (see chars_per_call)."""
        most = self._blocks.steps
        if self.chars_per_call is None:
            return most
        return max(1, min(most, self.chars_per_call // max(rows, 1)))

    def draws(self, rows: np.ndarray) -> Draws:
        """The last `step`'s results for `rows`, read out in bulk (a few array-to-list
        conversions, not a numpy access per row, step and field)."""
        block = self.block
        counts = block.counts[rows]  # (m,): steps each row took, ≥ 1
        last = counts - 1
        asked = self.sampler.settings.logprobs[rows].tolist()
        records = b""
        if asked and max(asked) >= 0:  # (m, steps, ROW_WIDTH): each row's records in a run
            records = block.records[:, rows].transpose(1, 0, 2).tobytes()
        return Draws(
            self,
            rows.tolist(),
            counts.tolist(),
            block.ids[:, rows].T.tolist(),
            block.held[last, rows].tolist(),
            block.status[last, rows].tolist(),
            asked,
            records,
            block.steps * RECORD_BYTES,
        )

    def record(self, row: int, output: RowOutput) -> int:
        """Move the row's draws of the last `step` into `output` (its chars, logprobs,
        hold-back, and how it ended). → its status; for a failure, FAILURES[status] says
        why."""
        return self.draws(np.array([row], np.int64)).record(0, output)

    def record_prompt(self, row: int, position: int, output: RowOutput) -> None:
        """After `prefill` read prime[position]: the next prime char's logprob, if asked."""
        params = self.params[row]
        if params is not None and params.prompt_logprobs and position + 1 < len(params.prime):
            output.prompt_logprobs.append(self.sampler.out.logprob_records[row].tobytes())

    def finish_unsampled(self, row: int, output: RowOutput) -> None:
        """A request with length 0 ends once its prime has run."""
        output.finish("length")
        if self.params[row].regex is not None:  # type: ignore[union-attr]
            output.regex_complete = self.regex_complete(row)

    def regex_complete(self, row: int) -> bool:
        """Whether the row's output so far is a whole match of its regex."""
        state = self.sampler.state.regex_state[row]
        return bool(state >= 0 and self.automata.final[state])

    def compact(self) -> None:
        """Housekeeping between steps: drop automata no row uses any more."""
        self.automata.compact(self.sampler.state.regex_state)


@dataclass
class Draws:
    """One `step`'s results for some rows, as lists (BatchDecoder.draws)."""

    decoder: BatchDecoder
    rows: list[int]
    counts: list[int]  # draws each row made (its last wrote nothing if in NO_CHARACTER)
    ids: list[list[int]]  # each row's draws, block_steps long (the first `count` are its)
    held: list[int]  # after each row's last draw
    status: list[int]  # of each row's last draw
    asked: list[int]  # logprobs asked for (-1: none)
    records: bytes  # each row's block of logprob records, when any row asked (else empty)
    row_bytes: int  # one row's block of records

    def record(self, index: int, output: RowOutput) -> int:
        """Move the index-th row's characters into `output`. → the status of its last draw
        (FAILURES: why it failed; the characters before that one are kept)."""
        status, count = self.status[index], self.counts[index]
        drawn = count - 1 if status in NO_CHARACTER else count  # its last draw wrote none
        if drawn:
            if self.asked[index] >= 0:
                start = index * self.row_bytes
                output.logprobs.append(self.records[start : start + drawn * RECORD_BYTES])
            output.extend(self.ids[index][:drawn], self.held[index])
        if status in FAILURES or status == RUNNING:
            return status
        stop_length = self.held[index] if status == FINISHED_STOP else 0
        output.finish(FINISH_REASONS[status], stop_length)
        row = self.rows[index]
        if self.decoder.params[row].regex is not None:  # type: ignore[union-attr]
            output.regex_complete = self.decoder.regex_complete(row)
        return status
