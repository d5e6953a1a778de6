"""The compiled CPU decoding step (numba): one LSTM step over any set of state rows.

It releases the GIL, so the decoding thread runs it while the HTTP event loop runs on the
other core.

Why not torch's matmul: a BLAS computes a row of an (M, K)·(K, N) product with different
code paths (and summation orders) for different M, so a stream's numbers would depend on
how many others share its step, and a seed would not give the same text alone and in a
crowd. Here every output element is the same chain of fused multiply-adds, in the same
order, whatever the batch: rows go through in pairs (the pair shares each weight load; the
last row of an odd count goes alone through a loop with the same expression), and the k
loop is unrolled by 4 with a fixed association. Plain floating-point semantics (only FMA
contraction, no reassociation: model/fast_math.py) make that hold by construction;
tests/model/decoding/test_step.py checks it bit for bit.

The weights, in the order `lstm_rows_step` takes them (`step_weights` builds them):

    input_table      (V, 4H)       W_ih0ᵀ + both layer-0 biases: the one-hot product as a lookup
    recurrent0       (H, 4H)       W_hh0ᵀ
    upper_input      (L-1, H, 4H)  W_ihᵀ of the layers above
    upper_recurrent  (L-1, H, 4H)  W_hhᵀ of the layers above
    upper_bias       (L-1, 4H)     b_ih + b_hh of the layers above
    head_weight      (H, V)
    head_bias        (V,)
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from model.fast_math import JIT, lstm_cell
from model.network import CharRNN

StepWeights = tuple[np.ndarray, ...]


def step_weights(model: CharRNN) -> StepWeights:
    """The network's LSTM weights laid out for lstm_rows_step (float32, contiguous)."""
    config = model.config
    layers, hidden = config.num_layers, config.hidden_size

    def array(tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

    gate_width = 4 * hidden
    upper_input = np.zeros((layers - 1, hidden, gate_width), np.float32)
    upper_recurrent = np.zeros_like(upper_input)
    upper_bias = np.zeros((layers - 1, gate_width), np.float32)
    with torch.no_grad():
        for index in range(layers - 1):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(index + 1)
            upper_input[index] = array(w_ih.t())
            upper_recurrent[index] = array(w_hh.t())
            upper_bias[index] = array(b_ih + b_hh)
        return (
            array(model.input_table()),
            array(model.layer_weights(0)[1].t()),
            upper_input,
            upper_recurrent,
            upper_bias,
            array(model.head.weight.t()),
            array(model.head.bias),
        )


@njit(inline="always", **JIT)
def _accumulate_pair(x, weight, out, a, b):
    """out[a] += x[a] · weight and out[b] += x[b] · weight; x (R, K), weight (K, N)."""
    inner, width = weight.shape
    unrolled = inner - inner % 4
    for k in range(0, unrolled, 4):
        xa0, xa1, xa2, xa3 = x[a, k], x[a, k + 1], x[a, k + 2], x[a, k + 3]
        xb0, xb1, xb2, xb3 = x[b, k], x[b, k + 1], x[b, k + 2], x[b, k + 3]
        for j in range(width):
            w0, w1, w2, w3 = weight[k, j], weight[k + 1, j], weight[k + 2, j], weight[k + 3, j]
            out[a, j] += ((xa0 * w0 + xa1 * w1) + xa2 * w2) + xa3 * w3
            out[b, j] += ((xb0 * w0 + xb1 * w1) + xb2 * w2) + xb3 * w3
    for k in range(unrolled, inner):
        xa, xb = x[a, k], x[b, k]
        for j in range(width):
            out[a, j] += xa * weight[k, j]
            out[b, j] += xb * weight[k, j]


@njit(inline="always", **JIT)
def _accumulate_one(x, weight, out, a):
    """out[a] += x[a] · weight: the same expression per element as _accumulate_pair, so a
    row's numbers are the same whether it has a partner or not."""
    inner, width = weight.shape
    unrolled = inner - inner % 4
    for k in range(0, unrolled, 4):
        xa0, xa1, xa2, xa3 = x[a, k], x[a, k + 1], x[a, k + 2], x[a, k + 3]
        for j in range(width):
            w0, w1, w2, w3 = weight[k, j], weight[k + 1, j], weight[k + 2, j], weight[k + 3, j]
            out[a, j] += ((xa0 * w0 + xa1 * w1) + xa2 * w2) + xa3 * w3
    for k in range(unrolled, inner):
        xa = x[a, k]
        for j in range(width):
            out[a, j] += xa * weight[k, j]


@njit(inline="always", **JIT)
def _accumulate(x, weight, out, a, b, paired):
    if paired:
        _accumulate_pair(x, weight, out, a, b)
    else:
        _accumulate_one(x, weight, out, a)


@njit(**JIT)
def lstm_rows_step(rows, ids, weights, h, c, gates, logits):
    """Advance the given rows by one character each, in place.

    rows (m,) int64: state rows to advance; ids (m,) int64: their input characters.
    weights: see the module docstring. h, c (L, R, H), gates (R, 4H), logits (R, V): the
    state rows; each advanced row's logits become its next character's.
    """
    input_table, recurrent0, upper_input, upper_recurrent, upper_bias = weights[:5]
    head_weight, head_bias = weights[5:]
    layers, hidden = h.shape[0], h.shape[2]
    count = rows.shape[0]
    for layer in range(layers):
        for p in range(0, count, 2):
            paired = p + 1 < count
            a = rows[p]
            b = rows[p + 1] if paired else a
            if layer == 0:
                gates[a, :] = input_table[ids[p]]
                if paired:
                    gates[b, :] = input_table[ids[p + 1]]
                _accumulate(h[0], recurrent0, gates, a, b, paired)
            else:
                gates[a, :] = upper_bias[layer - 1]
                gates[b, :] = upper_bias[layer - 1]
                _accumulate(h[layer - 1], upper_input[layer - 1], gates, a, b, paired)
                _accumulate(h[layer], upper_recurrent[layer - 1], gates, a, b, paired)
        for p in range(count):
            r = rows[p]
            for j in range(hidden):
                _, _, _, out_gate, cell, tanh_cell = lstm_cell(
                    gates[r, j],
                    gates[r, hidden + j],
                    gates[r, 2 * hidden + j],
                    gates[r, 3 * hidden + j],
                    c[layer, r, j],
                )
                c[layer, r, j] = cell
                h[layer, r, j] = out_gate * tanh_cell
    top = h[layers - 1]
    for p in range(0, count, 2):
        paired = p + 1 < count
        a = rows[p]
        b = rows[p + 1] if paired else a
        logits[a, :] = head_bias
        logits[b, :] = head_bias
        _accumulate(top, head_weight, logits, a, b, paired)


@njit(**JIT)
def lstm_layer_sequence(pre, recurrent, h, c, out):
    """One LSTM layer over a sequence, one stream: pre (T, 4H) the input projections (and
    both biases), recurrent (H, 4H) W_hhᵀ, h and c (1, H) the state (updated in place),
    out (T, H) the outputs. Each step is the decoding step's own arithmetic for one row,
    so scoring a text reads the network as generation does."""
    steps, hidden = pre.shape[0], h.shape[1]
    gates = np.empty((1, pre.shape[1]), np.float32)
    for t in range(steps):
        gates[0, :] = pre[t]
        _accumulate_one(h, recurrent, gates, 0)
        for j in range(hidden):
            _, _, _, out_gate, cell, tanh_cell = lstm_cell(
                gates[0, j], gates[0, hidden + j], gates[0, 2 * hidden + j],
                gates[0, 3 * hidden + j], c[0, j],
            )  # fmt: skip
            c[0, j] = cell
            h[0, j] = out_gate * tanh_cell
        out[t, :] = h[0]
