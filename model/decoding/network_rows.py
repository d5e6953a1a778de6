"""The network state of a decoder's rows, and how it advances: one backend per decoder,
chosen once when the decoder is built.

- KernelRows: the CPU path for float32 LSTMs. State in numpy, steps in the compiled kernel
  (model/decoding/step.py: GIL released, row-invariant by construction, no padding: one
  stream costs one row), the sampler fused into the same compiled call.
- TorchRows: any device and cell (cuDNN on GPUs), through the network's own forward.
  Steps are padded to a multiple of MIN_ROWS rows: MKL gives a row of a product the same
  bits in steps of 8, 16, 24, ... rows, but not below 8 nor in the tail rows of 9 to 11.
  Sampling is the same compiled chain, on a CPU copy of the rows' logits (B × V a step).

Rows are slots addressed by index, in any order; a step takes the rows it advances.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from model.atomic import take
from model.decoding.sampler import sample_rows
from model.decoding.sampler_rows import Out, SamplerRows, StepBlock
from model.decoding.step import lstm_rows_step, multiply_rows, step_weights
from model.fast_math import JIT
from model.network import CharRNN

MIN_ROWS = 8
ROWS_PER_THREAD = 8  # fewer rows than this per thread: not worth a hand-off
# Rows in a piece of a step that a thread takes at a time (KernelRows: the kernel's cost per
# row is the same from 4 rows up, so small pieces balance the threads for ~2 %).
PIECE_ROWS = 8
Automata = tuple[np.ndarray, np.ndarray, np.ndarray]  # model/decoding/automaton.py's pool


@dataclass(frozen=True)
class RowSnapshot:
    """One row's network state and next-character logits, as a copy (the prime cache)."""

    state: tuple[np.ndarray | torch.Tensor, ...]  # each (L, H)
    logits: np.ndarray | torch.Tensor  # (V,)

    @property
    def nbytes(self) -> int:
        arrays = (*self.state, self.logits)
        return sum(array.nbytes for array in arrays)  # numpy arrays and tensors alike


def kernel_supported(model: CharRNN) -> bool:
    weight = model.head.weight
    return (
        model.config.cell == "lstm"
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
    )


@njit(**JIT)
def keep_step(k, rows, out, block):
    """Copy step k's sampler outputs (out) for `rows` into the block; they took k + 1 steps."""
    out = Out(*out)  # by name, whether passed as Out or as a plain tuple
    ids, status, held, records, counts = block
    for i in range(rows.shape[0]):
        r = rows[i]
        ids[k, r] = out.ids[r]
        status[k, r] = out.status[r]
        held[k, r] = out.held[r]
        for j in range(records.shape[2]):
            records[k, r, j] = out.logprob_records[r, j]
        counts[r] = k + 1


@njit(**JIT)
def _sample_and_step(rows, settings, state, automata, out, block, weights, h, c, gates, logits):
    """Up to block-steps draws for each row, each fed back, until the row ends."""
    out = Out(*out)  # by name, whether passed as Out or as a plain tuple
    for k in range(block[0].shape[0]):
        if rows.shape[0] == 0:
            break
        running = sample_rows(rows, logits, settings, state, automata, out)
        keep_step(k, rows, out, block)
        lstm_rows_step(running, out.ids[running], weights, h, c, gates, logits)
        rows = running


@njit(**JIT)
def _head_rows(rows, weights, h, logits):
    """logits[row] ← the output layer of h[-1, row] for each of rows (m,): the end of
    lstm_rows_step on its own, so the same chain of operations and the same bits."""
    head_weight, head_bias = weights[5], weights[6]
    for p in range(rows.shape[0]):
        logits[rows[p], :] = head_bias
    multiply_rows(h[h.shape[0] - 1], rows, head_weight, logits)


@njit(**JIT)
def _advance_pieces(rows, ids, counter, weights, h, c, gates, logits):
    """lstm_rows_step for the pieces of `rows` this thread takes from `counter`."""
    while True:
        start = take(counter, PIECE_ROWS)
        if start >= rows.shape[0]:
            return
        end = start + PIECE_ROWS
        lstm_rows_step(rows[start:end], ids[start:end], weights, h, c, gates, logits)


@njit(**JIT)
def _sample_and_step_pieces(
    rows, counter, settings, state, automata, out, block, weights, h, c, gates, logits
):
    """_sample_and_step for the pieces of `rows` this thread takes from `counter`."""
    while True:
        start = take(counter, PIECE_ROWS)
        if start >= rows.shape[0]:
            return
        part = rows[start : start + PIECE_ROWS]
        _sample_and_step(part, settings, state, automata, out, block, weights, h, c, gates, logits)


class KernelRows:
    """LSTM rows on the CPU, stepped by the compiled kernel.

    threads > 1 runs a step on up to that many threads at once (at least ROWS_PER_THREAD
    rows each), the calling one and a small pool's: the kernel releases the GIL, and a
    row's numbers do not depend on which thread steps it. The threads take the rows in
    pieces from a shared counter, inside the compiled loop, until none is left: a thread
    that the OS or the GIL holds up takes fewer pieces, instead of the others waiting for
    its fixed half (under the hostile-load benchmark that wait was a fifth of the engine
    thread's time).
    """

    def __init__(self, model: CharRNN, capacity: int, threads: int = 1):
        if not kernel_supported(model):
            raise ValueError("the CPU kernel runs float32 LSTMs on the CPU only")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        config = model.config
        self._weights = step_weights(model)
        self.h = np.zeros((config.num_layers, capacity, config.hidden_size), np.float32)
        self.c = np.zeros_like(self.h)
        self.gates = np.zeros((capacity, 4 * config.hidden_size), np.float32)
        self.logits = np.zeros((capacity, config.vocab_size), np.float32)
        self.threads = threads
        # Its idle threads end when the pool is garbage-collected with these rows.
        self._pool = ThreadPoolExecutor(threads - 1, "decoder") if threads > 1 else None
        # Compile now (or load the compiled code from numba's cache), not on a first request.
        none = np.zeros(0, np.int64)
        self.advance(none, none)
        self.load_logits(none)

    def _on_threads(self, count: int, work: Callable[[np.ndarray], object]) -> None:
        """work(a fresh shared counter) on as many threads as `count` rows keep busy. A
        helper that has not started when this thread runs out of pieces is cancelled, not
        waited for: there is nothing left for it."""
        threads = min(self.threads, count // ROWS_PER_THREAD)
        counter = np.zeros(1, np.int64)
        helpers = [self._pool.submit(work, counter) for _ in range(threads - 1)]
        work(counter)
        for helper in helpers:
            if not helper.cancel():
                helper.result()

    def reset(self, row: int) -> None:
        self.h[:, row] = 0.0
        self.c[:, row] = 0.0

    def advance(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Feed each of rows (m,) its character ids (m,) → their next logits."""
        rows, ids = np.asarray(rows, np.int64), np.asarray(ids, np.int64)

        def work(counter: np.ndarray) -> None:
            weights = self._weights
            _advance_pieces(rows, ids, counter, weights, self.h, self.c, self.gates, self.logits)

        self._on_threads(len(rows), work)

    def sample_and_advance(
        self,
        rows: np.ndarray,
        sampler: SamplerRows,
        automata: Automata,
        block: StepBlock,
        split: bool = True,
    ) -> None:
        """Up to block.steps times: draw each row's next character, then advance the rows
        still running with it; the outputs of each step go to `block`. One compiled call
        per thread (one call on the calling thread with split False: the caller runs
        several decoders side by side instead): a row's steps never wait for another's."""

        settings, state, out = sampler.arrays  # plain tuples: see SamplerRows.arrays

        def work(counter: np.ndarray) -> None:
            _sample_and_step_pieces(
                rows, counter, settings, state, tuple(automata), out,
                block.arrays, self._weights, self.h, self.c, self.gates, self.logits,
            )  # fmt: skip

        if not split:
            work(np.zeros(1, np.int64))  # every piece on this thread
        else:
            self._on_threads(len(rows), work)

    def snapshot(self, row: int) -> RowSnapshot:
        return RowSnapshot((self.h[:, row].copy(), self.c[:, row].copy()), self.logits[row].copy())

    def read_state(self, row: int) -> tuple[np.ndarray, ...]:
        """The row's (h, c), copies, each (L, H) float32."""
        return self.h[:, row].copy(), self.c[:, row].copy()

    def load_state(self, row: int, arrays: tuple[np.ndarray, ...]) -> None:
        """Start the row from (h, c), each (L, H), instead of zeros."""
        self.h[:, row], self.c[:, row] = arrays

    def load_logits(self, rows: np.ndarray) -> None:
        """Each of rows (m,) gets the logits its state gives (as the step that reached it)."""
        _head_rows(np.asarray(rows, np.int64), self._weights, self.h, self.logits)

    def restore(self, row: int, snapshot: RowSnapshot) -> None:
        self.h[:, row], self.c[:, row] = snapshot.state
        self.logits[row] = snapshot.logits


class TorchRows:
    """Rows stepped by the network's forward on its device (GPU, or cells the kernel lacks)."""

    def __init__(self, model: CharRNN, capacity: int):
        self.model = model.eval()
        self.device = model.head.weight.device
        self.hidden = model.init_hidden(capacity, self.device)  # each (L, R, H)
        self.logits = np.zeros((capacity, model.config.vocab_size), np.float32)  # CPU copy

    def reset(self, row: int) -> None:
        for buffer in self.hidden:
            buffer[:, row] = 0.0

    def read_state(self, row: int) -> tuple[np.ndarray, ...]:
        """The row's (h, c) or (h,), as float32 copies on the CPU, each (L, H)."""
        return tuple(buffer[:, row].float().cpu().numpy().copy() for buffer in self.hidden)

    def load_state(self, row: int, arrays: tuple[np.ndarray, ...]) -> None:
        """Start the row from these arrays (as read_state gives them) instead of zeros."""
        for buffer, array in zip(self.hidden, arrays, strict=True):
            buffer[:, row] = torch.tensor(array).to(buffer.device, buffer.dtype)

    @torch.no_grad()
    def load_logits(self, rows: np.ndarray) -> None:
        """Each of rows (m,) gets the logits its state gives: the output layer of its top h,
        padded to MIN_ROWS rows as a step is."""
        if len(rows) == 0:
            return
        padded = -(-len(rows) // MIN_ROWS) * MIN_ROWS
        index = torch.zeros(padded, dtype=torch.long, device=self.device)
        index[: len(rows)] = torch.from_numpy(np.asarray(rows, np.int64))
        top = self.hidden[0][-1, index][None]  # (1, padded, H), as the forward's output
        logits = self.model.head(top)[0, : len(rows)]  # (m, V)
        self.logits[rows] = logits.float().cpu().numpy()

    @torch.no_grad()
    def advance(self, rows: np.ndarray, ids: np.ndarray) -> None:
        if len(rows) == 0:
            return
        padded = -(-len(rows) // MIN_ROWS) * MIN_ROWS  # a multiple of MIN_ROWS
        index = torch.zeros(padded, dtype=torch.long, device=self.device)
        index[: len(rows)] = torch.from_numpy(np.asarray(rows, np.int64))
        step_ids = torch.zeros(padded, 1, dtype=torch.long, device=self.device)
        step_ids[: len(rows), 0] = torch.from_numpy(np.asarray(ids, np.int64))
        hidden = tuple(buffer[:, index] for buffer in self.hidden)  # (L, padded, H)
        logits, hidden = self.model(step_ids, hidden)  # (padded, 1, V)
        live = index[: len(rows)]
        for buffer, state in zip(self.hidden, hidden, strict=True):
            buffer[:, live] = state[:, : len(rows)]
        self.logits[rows] = logits[: len(rows), 0].float().cpu().numpy()

    def sample_and_advance(
        self,
        rows: np.ndarray,
        sampler: SamplerRows,
        automata: Automata,
        block: StepBlock,
        split: bool = True,
    ) -> None:
        settings, state, out = sampler.arrays  # plain tuples: see SamplerRows.arrays
        tables = tuple(automata)
        for k in range(block.steps):
            if len(rows) == 0:
                break
            running = sample_rows(rows, self.logits, settings, state, tables, out)
            keep_step(k, rows, out, block.arrays)
            self.advance(running, sampler.out.ids[running])
            rows = running

    def snapshot(self, row: int) -> RowSnapshot:
        state = tuple(buffer[:, row].clone() for buffer in self.hidden)
        return RowSnapshot(state, self.logits[row].copy())

    def restore(self, row: int, snapshot: RowSnapshot) -> None:
        for buffer, state in zip(self.hidden, snapshot.state, strict=True):
            buffer[:, row] = state
        self.logits[row] = snapshot.logits
