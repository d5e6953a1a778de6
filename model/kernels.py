"""Compiled CPU kernels for decoding (numba): one LSTM step over a set of rows, and sampling.

Both release the GIL, so the decoding thread runs them while the HTTP event loop runs on
the other core.

Why not torch's matmul: a BLAS computes a row of an (M, K)·(K, N) product with different
code paths (and summation orders) for different M, so a stream's numbers would depend on
how many others share its step, and a seed would not give the same text alone and in a
crowd. MKL is row-invariant only from M = 8, which costs 8 rows of work for one stream.
Here every output element is the same chain of fused multiply-adds, in the same order,
whatever the batch: rows go through in pairs (the pair shares each weight load; the last
row of an odd count goes alone through a loop with the same expression), and the k loop is
unrolled by 4 with a fixed association. Plain floating-point semantics (only FMA
contraction is allowed, no reassociation) make that hold by construction;
tests/model/test_kernels.py checks it bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# error_model "numpy": a division by zero gives inf instead of a Python exception, which
# lets LLVM vectorise the loops that divide.
JIT = {"nogil": True, "cache": True, "fastmath": {"contract"}, "error_model": "numpy"}
TANH_CLAMP = np.float32(9.0)  # tanh(±9) is ±1 in float32
# Eigen's rational approximation of tanh for float32 (odd 13th over even 6th degree):
# within 3.3e-7 of the exact tanh, and made of multiplies, adds and one divide, so the gate
# loops vectorise (libm's tanhf/expf are scalar calls, ~25 ns each here).
TANH_NUMERATOR = tuple(
    np.float32(value)
    for value in (
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    )
)
TANH_DENOMINATOR = tuple(
    np.float32(value)
    for value in (
        1.19825839466702e-06,
        1.18534705686654e-04,
        2.26843463243900e-03,
        4.89352518554385e-03,
    )
)
HALF = np.float32(0.5)


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


@njit(inline="always", **JIT)
def _tanh(x):
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    numerator = TANH_NUMERATOR[0]
    for coefficient in TANH_NUMERATOR[1:]:
        numerator = numerator * x2 + coefficient
    denominator = TANH_DENOMINATOR[0]
    for coefficient in TANH_DENOMINATOR[1:]:
        denominator = denominator * x2 + coefficient
    return x * numerator / denominator


@njit(inline="always", **JIT)
def _sigmoid(x):
    return HALF + HALF * _tanh(HALF * x)  # σ(x) = (1 + tanh(x/2)) / 2, exactly


@njit(**JIT)
def lstm_rows_step(rows, ids, weights, h, c, gates, logits):
    """Advance the given rows by one character each, in place.

    rows (m,) int64: state rows to advance; ids (m,) int64: their input characters.
    weights: (input_table (V, 4H): W_ih0ᵀ + both layer-0 biases, the one-hot product as a
    lookup; recurrent0 (H, 4H): W_hh0ᵀ; upper_input, upper_recurrent (L-1, H, 4H): W_ihᵀ
    and W_hhᵀ of the layers above; upper_bias (L-1, 4H); head_weight (H, V); head_bias
    (V)).
    h, c (L, R, H), gates (R, 4H), logits (R, V): the state rows. Gate order i, f, g, o as in
    torch.nn.LSTM.
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
                in_gate = _sigmoid(gates[r, j])
                forget = _sigmoid(gates[r, hidden + j])
                candidate = _tanh(gates[r, 2 * hidden + j])
                out_gate = _sigmoid(gates[r, 3 * hidden + j])
                cell = forget * c[layer, r, j] + in_gate * candidate
                c[layer, r, j] = cell
                h[layer, r, j] = out_gate * _tanh(cell)
    top = h[layers - 1]
    for p in range(0, count, 2):
        paired = p + 1 < count
        a = rows[p]
        b = rows[p + 1] if paired else a
        logits[a, :] = head_bias
        logits[b, :] = head_bias
        _accumulate(top, head_weight, logits, a, b, paired)


@njit(**JIT)
def filtered_probs(logits, temperature, top_k, top_p):
    """One row: temperature, top-k, then top-p → (probabilities sorted from the most likely
    character (V,), the order that sorts them (V,)). Filtered-out characters get 0, the
    rest are renormalised; the most likely character always stays."""
    vocab = logits.shape[0]
    scaled = logits.astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="mergesort")  # stable: ties keep vocabulary order
    kept = min(max(top_k, 1), vocab)
    probs = np.zeros(vocab)
    peak = scaled[order[0]]
    total = 0.0
    for i in range(kept):
        probs[i] = math.exp(scaled[order[i]] - peak)
        total += probs[i]
    # Nucleus: drop a character once the more likely ones already reach top_p.
    before = 0.0
    for i in range(kept):
        probs[i] /= total
        if i > 0 and before >= top_p:
            kept = i
            break
        before += probs[i]
    probs[kept:] = 0.0
    probs /= probs[:kept].sum()
    return probs, order


@njit(inline="always", **JIT)
def _sample_row(r, logits, temperature, top_k, top_p, uniforms, positions):
    probs, order = filtered_probs(logits[r], temperature[r], top_k[r], top_p[r])
    target = uniforms[r, positions[r]]
    positions[r] += 1
    cumulative = 0.0
    picked = 0
    for i in range(probs.shape[0]):
        cumulative += probs[i]
        if probs[i] > 0.0:
            picked = i
        if cumulative > target:
            break
    return order[picked]


@njit(**JIT)
def sample_rows(count, logits, temperature, top_k, top_p, uniforms, positions, out):
    """Draw one character for each of rows [0, count) by inverse-CDF sampling.

    logits (R, V); temperature, top_p (R,) float64; top_k (R,) int64; uniforms (R, U)
    float64: each row's next uniform numbers in [0, 1), consumed at positions (R,) int64,
    which advance by one; out (R,) int64 receives the characters. Deterministic given the
    uniforms, so each row can bring its own random stream.
    """
    for r in range(count):
        out[r] = _sample_row(r, logits, temperature, top_k, top_p, uniforms, positions)


@njit(**JIT)
def sample_and_step(
    rows, temperature, top_k, top_p, uniforms, positions, out, weights, h, c, gates, logits
):
    """sample_rows, then lstm_rows_step with the characters drawn, for the given rows
    (m,) int64: one call per decoding step (and per thread)."""
    ids = np.empty(rows.shape[0], dtype=np.int64)
    for p in range(rows.shape[0]):
        r = rows[p]
        ids[p] = _sample_row(r, logits, temperature, top_k, top_p, uniforms, positions)
        out[r] = ids[p]
    lstm_rows_step(rows, ids, weights, h, c, gates, logits)
