"""How surprising each character of a text is to a model: its log-probability given every
character before it (the first has none), with the likeliest alternatives if asked.

    scorer = Scorer(model, ids, top_n=3)
    while not scorer.done:
        scorer.advance(1024)           # a slice at a time (the service interleaves streams)
    scorer.logprobs                    # (N,) float64 nats; logprobs[0] is NaN
    scorer.nats_per_char               # the mean over positions 1..N-1, as `eval` reports
    scorer.final_state()               # the text's state, to continue it (model/state.py)

A scorer may start from a text's state (model/state.py): its ids are then state.prime(the
new text's ids), whose first character the state has read already, and logprobs[1:] are
the new text's, each given everything before it.

On the CPU an LSTM is read layer by layer over each slice with the decoding step's own
compiled arithmetic (so its state is the decoder's, bit for bit): the first layer (a
lookup and a recurrence) on the calling thread, the rest (their input products, their
recurrences, the output layer) on a second one, one slice behind, so both cores work on one
text. Elsewhere the network's forward runs.

Given `weights` (model/decoding/step.py's step_weights, made once per model and shared), a
scorer holds no copy of its own: it is read by model/scoring_rows.py's read_rows, alone or
in one batched pass beside other texts, with the same numbers either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np
import torch

from model.decoding.network_rows import kernel_supported
from model.decoding.step import StepWeights, lstm_layer_sequence, multiply_rows, pack_panels
from model.network import CharRNN
from model.scoring_rows import head_logits, read_rows
from model.state import RecurrentState, text_state


class Scorer:
    def __init__(
        self,
        model: CharRNN,
        ids: Sequence[int] | np.ndarray,
        top_n: int = 0,
        executor: Executor | None = None,
        state: RecurrentState | None = None,
        weights: StepWeights | None = None,
    ):
        self.model = model.eval()
        self.ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            raise ValueError("nothing to score: the text is empty")
        if state is not None and self.ids[0] != state.last:
            raise ValueError("a text after a state starts with its last character")
        self.state = state
        self._next = 0 if state is None else 1  # the next position to read into the network
        self.top_n = top_n
        count = len(self.ids)
        self.logprobs = np.full(count, np.nan)
        self.top_ids = np.zeros((count, top_n), np.int32)  # vocabulary ids: 4 bytes suffice
        self.top_logprobs = np.zeros((count, top_n))
        self._executor = executor
        self._pending: Future | None = None
        self._compiled = kernel_supported(model)
        # Shared weights (step_weights, one copy per model): the text is read by read_rows
        # (model/scoring_rows.py), alone or beside others, and builds no copy of its own.
        self._shared = weights if self._compiled else None
        config = model.config
        layers, hidden = config.num_layers, config.hidden_size
        if self._shared is not None:
            self._h = np.zeros((layers, 1, hidden), np.float32)
            self._c = np.zeros_like(self._h)
        elif self._compiled:
            with torch.no_grad():
                self._table = model.input_table().numpy()  # (V, 4H)
                self._recurrent = [
                    np.ascontiguousarray(model.layer_weights(layer)[1].t().numpy())
                    for layer in range(layers)
                ]  # each (H, 4H)
                # The upper layers' W_ihᵀ in the step's panels, and b_ih + b_hh (the step's
                # own products, so the state is the decoder's bit for bit)
                self._upper_input = [
                    pack_panels(np.ascontiguousarray(model.layer_weights(layer)[0].t().numpy()))
                    for layer in range(1, layers)
                ]
                self._upper_bias = [
                    (weights[2] + weights[3]).numpy()
                    for weights in map(model.layer_weights, range(1, layers))
                ]
            self._h = np.zeros((layers, 1, hidden), np.float32)
            self._c = np.zeros_like(self._h)
        else:
            self._hidden = model.init_hidden(1)
        if state is not None:
            self._start_from(state)

    @torch.no_grad()
    def _start_from(self, state: RecurrentState) -> None:
        """The state as the network's, and the prediction of ids[1] it gives."""
        if self._compiled:
            self._h[:, 0], self._c[:, 0] = state.arrays
            top = torch.from_numpy(self._h[-1])  # (1, H)
        else:
            for buffer, array in zip(self._hidden, state.arrays, strict=True):
                buffer[:, 0] = torch.tensor(array).to(buffer.device, buffer.dtype)
            top = self._hidden[0][-1]
        self._record(0, self.model.head(top).float().cpu())  # (1, V)

    @property
    def done(self) -> bool:
        return self._next >= len(self.ids) and self._pending is None

    @property
    def scored(self) -> int:
        """Positions whose log-probability is known (the first counts: it has none)."""
        return int(np.count_nonzero(~np.isnan(self.logprobs[1:]))) + 1

    @property
    def nats(self) -> float:
        return float(-np.nansum(self.logprobs))

    @property
    def nats_per_char(self) -> float:
        predicted = len(self.ids) - 1
        return self.nats / predicted if predicted else float("nan")

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def hidden_state(self) -> tuple[np.ndarray, np.ndarray]:
        """h and c (L, 1, H), read and written in place by read_rows (compiled only)."""
        return self._h, self._c

    def claim_slice(self, max_chars: int) -> tuple[int, int]:
        """The next up to `max_chars` positions to read, taken: (start, end); the caller
        reads them into the network and records their logits (read_rows)."""
        start = self._next
        self._next = min(len(self.ids), start + max(1, max_chars))
        return start, self._next

    def advance(self, max_chars: int) -> int:
        """Read up to `max_chars` more characters; → how many were read."""
        if self._shared is not None:
            return read_rows([self], self._shared, max_chars)
        start = self._next
        end = min(len(self.ids), start + max(1, max_chars))
        if start >= end:
            self._finish_pending()
            return 0
        self._next = end
        if not self._compiled:
            self._forward(start, end)
            return end - start
        first = self._first_layer(start, end)  # (T, H), while the previous slice finishes
        self._finish_pending()
        if self._executor is None:
            self._upper_layers(start, first)
        else:
            self._pending = self._executor.submit(self._upper_layers, start, first)
            if end == len(self.ids):
                self._finish_pending()
        return end - start

    def _finish_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _first_layer(self, start: int, end: int) -> np.ndarray:
        out = np.empty((end - start, self._h.shape[2]), np.float32)
        pre = self._table[self.ids[start:end]]  # (T, 4H): the one-hot product and biases
        lstm_layer_sequence(pre, self._recurrent[0], self._h[0], self._c[0], out)
        return out

    @torch.no_grad()
    def _upper_layers(self, start: int, below: np.ndarray) -> None:
        model = self.model
        rows = np.arange(len(below))
        for layer in range(1, model.config.num_layers):
            bias = self._upper_bias[layer - 1]
            pre = np.empty((len(below), len(bias)), np.float32)  # (T, 4H)
            pre[:] = bias
            multiply_rows(below, rows, self._upper_input[layer - 1], pre)  # += below · W_ihᵀ
            out = np.empty_like(below)
            lstm_layer_sequence(pre, self._recurrent[layer], self._h[layer], self._c[layer], out)
            below = out
        self._record(start, head_logits(model, torch.from_numpy(below)))  # (T, V)

    @torch.no_grad()
    def _forward(self, start: int, end: int) -> None:
        device = self.model.head.weight.device
        ids = torch.from_numpy(self.ids[start:end]).to(device)[None]  # (1, T)
        logits, self._hidden = self.model(ids, self._hidden)
        self._record(start, logits[0].float().cpu())

    def final_state(self) -> RecurrentState:
        """Once done: the state of the whole text (the state it started from, then ids)."""
        if not self.done:
            raise RuntimeError("the text is not read yet")
        if self._compiled:
            arrays: tuple[np.ndarray, ...] = (self._h[:, 0].copy(), self._c[:, 0].copy())
        else:
            arrays = tuple(buffer[:, 0].float().cpu().numpy().copy() for buffer in self._hidden)
        return text_state(arrays, self.state, self.ids, ())

    def record_logits(self, start: int, logits: torch.Tensor) -> None:
        """Logits (T, V) after positions start .. start+T-1, as read_rows read them."""
        self._record(start, logits)

    def _record(self, start: int, logits: torch.Tensor) -> None:
        """Logits after positions start .. start+T-1 → log-probabilities of the next ones."""
        logprobs = torch.log_softmax(logits.double(), dim=-1)  # (T, V)
        targets = self.ids[start + 1 : start + 1 + len(logits)]
        rows = len(targets)
        picked = logprobs[torch.arange(rows), torch.from_numpy(targets)]
        self.logprobs[start + 1 : start + 1 + rows] = picked.numpy()
        if self.top_n:
            values, indices = logprobs[:rows].topk(self.top_n, dim=-1)
            self.top_ids[start + 1 : start + 1 + rows] = indices.numpy()
            self.top_logprobs[start + 1 : start + 1 + rows] = values.numpy()


def score_text(
    model: CharRNN, ids: Sequence[int], top_n: int = 0, slice_chars: int = 1024
) -> Scorer:
    """Score a whole text at once (the command line's `score`), on two threads."""
    with ThreadPoolExecutor(1, "scorer") as executor:
        scorer = Scorer(model, ids, top_n, executor)
        while not scorer.done:
            scorer.advance(slice_chars)
    return scorer
