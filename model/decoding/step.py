"""The compiled CPU decoding step (numba): one LSTM step over any set of state rows.

It releases the GIL, so the decoding thread runs it while the HTTP event loop runs on the
other core.

Why not torch's matmul: a BLAS computes a row of an (M, K)·(K, N) product with different
code paths (and summation orders) for different M, so a stream's numbers would depend on
how many others share its step, and a seed would not give the same text alone and in a
crowd. Here every output element of a product is one fixed chain of operations, each
rounded once (the multiply-adds are llvm.fma, so contraction flags cannot change them):

    total = out[row, j]                     the table row or the bias (or an earlier product)
    for each CHUNK of k, in order (k = 0..31, 32..63, ...):
        part = 0
        part = fma(x[row, k], W[k, j], part)    for each k of the chunk, in order
        total = total + part
    out[row, j] = total

(Sums of CHUNK products join the running total 8 times for K = 256, rather than 256 single
products: on the shipped model that keeps the logits within 1e-5 of a float64 network
instead of 5e-5.) The products run as a register-blocked micro-kernel: a block of ROWS rows
× a PANEL of outputs (4 × 64 floats: 16 AVX-512 registers) accumulates each chunk in
registers, so each weight vector loaded feeds ROWS rows; the rows left over (count % ROWS)
go through the same code as a block of 1-3 rows. A block only decides which chains advance
side by side, never what a chain computes, so a row's numbers are the same alone, in a
block or in the remainder, in any slot and in any thread's share, and in scoring's
recurrence (lstm_layer_sequence); tests/model/decoding/test_step_blocked.py checks it bit
for bit.

    W (K, N) ──pack_panels──▶ panels (⌈N/PANEL⌉, K, PANEL): panel p = columns p·PANEL ..
    one block, one panel:     for k: part[r, :] = fma(x[row_r, k], panels[p, k, :], part[r, :])
                              (r < ROWS: 4 broadcasts, 4 vector loads, 16 vector FMAs)

On CPUs without AVX-512 the same code runs (and gives a row the same numbers whatever its
batch), with the accumulators spilling out of the 16 AVX2 registers.

The weights, in the order `lstm_rows_step` takes them (`step_weights` builds them):

    input_table      (V, 4H)                      W_ih0ᵀ + both layer-0 biases: the
                                                  one-hot product as a lookup
    recurrent0       (⌈4H/PANEL⌉, H, PANEL)       W_hh0ᵀ in panels
    upper_input      (L-1, ⌈4H/PANEL⌉, H, PANEL)  W_ihᵀ of the layers above, in panels
    upper_recurrent  (L-1, ⌈4H/PANEL⌉, H, PANEL)  W_hhᵀ of the layers above, in panels
    upper_bias       (L-1, 4H)                    b_ih + b_hh of the layers above
    head_weight      (⌈V/PANEL⌉, H, PANEL)        the head's weightᵀ in panels
    head_bias        (V,)
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
import numpy as np
import torch
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from model.fast_math import JIT, lstm_cell
from model.network import CharRNN

ROWS = 4  # rows per block: each weight vector loaded feeds this many (multiply_rows
# writes out the remainder's blocks, of 1-3 rows)
PANEL = 64  # outputs per block: ROWS × PANEL accumulators = 16 AVX-512 registers
CHUNK = 32  # products summed apart before they join an output's running total

StepWeights = tuple[np.ndarray, ...]


def step_weights(model: CharRNN) -> StepWeights:
    """The network's LSTM weights laid out for lstm_rows_step (float32, contiguous)."""
    config = model.config
    layers, hidden = config.num_layers, config.hidden_size

    def array(tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

    gate_panels = (4 * hidden + PANEL - 1) // PANEL
    upper_input = np.zeros((layers - 1, gate_panels, hidden, PANEL), np.float32)
    upper_recurrent = np.zeros_like(upper_input)
    upper_bias = np.zeros((layers - 1, 4 * hidden), np.float32)
    with torch.no_grad():
        for index in range(layers - 1):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(index + 1)
            upper_input[index] = pack_panels(array(w_ih.t()))
            upper_recurrent[index] = pack_panels(array(w_hh.t()))
            upper_bias[index] = array(b_ih + b_hh)
        return (
            array(model.input_table()),
            pack_panels(array(model.layer_weights(0)[1].t())),
            upper_input,
            upper_recurrent,
            upper_bias,
            pack_panels(array(model.head.weight.t())),
            array(model.head.bias),
        )


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once (llvm.fma): the same operation wherever it is inlined, scalar
    or vectorised, whatever the contraction flags."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        kind = args[0].type
        fma = builder.module.declare_intrinsic(
            "llvm.fma", [kind], llvm_ir.FunctionType(kind, [kind, kind, kind])
        )
        return builder.call(fma, args)

    return a(a, b, c), codegen


@intrinsic
def _block_scratch(typingctx):
    """A pointer to ROWS × PANEL float32 on the stack (in the function's entry block).
    Unlike a heap array, it provably overlaps no argument, so LLVM keeps a block's
    accumulators in registers through a whole chunk of the k loop."""

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, llvm_ir.FloatType(), size=ROWS * PANEL)

    return types.CPointer(types.float32)(), codegen


@njit(**JIT)
def pack_panels(weight):
    """weight (K, N) float32 → panels (⌈N/PANEL⌉, K, PANEL): panel p holds columns
    p·PANEL .. p·PANEL + PANEL - 1 (zeros past N), so a block reads one contiguous stream."""
    inner, width = weight.shape
    panels = np.zeros(((width + PANEL - 1) // PANEL, inner, PANEL), np.float32)
    for panel in range(panels.shape[0]):
        start = panel * PANEL
        valid = min(PANEL, width - start)
        for k in range(inner):
            panels[panel, k, :valid] = weight[k, start : start + valid]
    return panels


@njit(inline="always", **JIT)
def _multiply_block(x, rows, first, count, panels, out):
    """out[row] += x[row] · W for row = rows[first], ..., rows[first + count - 1] (count ≤
    ROWS, a constant where inlined), W as pack_panels lays it out; x (R, K), out (R, N).
    One chain per element, as the module docstring shows: the loops over r and j only
    choose which chains advance side by side. `part` lives in registers through a chunk;
    `total` on the stack."""
    inner, width = panels.shape[1], out.shape[1]
    total = carray(_block_scratch(), (ROWS, PANEL))
    part = carray(_block_scratch(), (ROWS, PANEL))
    for panel in range(panels.shape[0]):
        start = panel * PANEL
        valid = min(PANEL, width - start)
        for r in range(count):
            row = rows[first + r]
            for j in range(PANEL):
                total[r, j] = out[row, start + j] if j < valid else np.float32(0.0)
        for chunk in range((inner + CHUNK - 1) // CHUNK):
            for r in range(count):
                for j in range(PANEL):
                    part[r, j] = np.float32(0.0)
            for step in range(min(CHUNK, inner - chunk * CHUNK)):
                k = chunk * CHUNK + step
                for j in range(PANEL):  # vectorised: PANEL / 16 AVX-512 FMAs per row
                    weight = panels[panel, k, j]
                    for r in range(count):
                        part[r, j] = _fma(x[rows[first + r], k], weight, part[r, j])
            for r in range(count):
                for j in range(PANEL):
                    total[r, j] = total[r, j] + part[r, j]
        for r in range(count):
            row = rows[first + r]
            for j in range(valid):
                out[row, start + j] = total[r, j]


@njit(**JIT)
def multiply_rows(x, rows, panels, out):
    """out[row] += x[row] · W for each row in rows (m,); W in panels (pack_panels)."""
    count = rows.shape[0]
    full = count - count % ROWS
    for first in range(0, full, ROWS):
        _multiply_block(x, rows, first, ROWS, panels, out)
    left = count - full  # the same chains, in a block of 1-3 rows
    if left == 3:
        _multiply_block(x, rows, full, 3, panels, out)
    elif left == 2:
        _multiply_block(x, rows, full, 2, panels, out)
    elif left == 1:
        _multiply_block(x, rows, full, 1, panels, out)


@njit(inline="always", **JIT)
def cell_rows(rows, gates, h, c):
    """h, c (R, H) of each row in rows ← the LSTM cell of its gate pre-activations."""
    hidden = h.shape[1]
    for p in range(rows.shape[0]):
        r = rows[p]
        for j in range(hidden):
            _, _, _, out_gate, cell, tanh_cell = lstm_cell(
                gates[r, j],
                gates[r, hidden + j],
                gates[r, 2 * hidden + j],
                gates[r, 3 * hidden + j],
                c[r, j],
            )
            c[r, j] = cell
            h[r, j] = out_gate * tanh_cell


@njit(**JIT)
def lstm_rows_step(rows, ids, weights, h, c, gates, logits):
    """Advance the given rows by one character each, in place.

    rows (m,) int64: state rows to advance; ids (m,) int64: their input characters.
    weights: see the module docstring. h, c (L, R, H), gates (R, 4H), logits (R, V): the
    state rows; each advanced row's logits become its next character's.
    """
    input_table, recurrent0, upper_input, upper_recurrent, upper_bias = weights[:5]
    head_weight, head_bias = weights[5:]
    layers = h.shape[0]
    count = rows.shape[0]
    for p in range(count):
        gates[rows[p], :] = input_table[ids[p]]
    multiply_rows(h[0], rows, recurrent0, gates)
    cell_rows(rows, gates, h[0], c[0])
    for layer in range(1, layers):
        for p in range(count):
            gates[rows[p], :] = upper_bias[layer - 1]
        multiply_rows(h[layer - 1], rows, upper_input[layer - 1], gates)
        multiply_rows(h[layer], rows, upper_recurrent[layer - 1], gates)
        cell_rows(rows, gates, h[layer], c[layer])
    for p in range(count):
        logits[rows[p], :] = head_bias
    multiply_rows(h[layers - 1], rows, head_weight, logits)


@njit(**JIT)
def lstm_layer_sequence(pre, recurrent, h, c, out):
    """One LSTM layer over a sequence, one stream: pre (T, 4H) the input projections (and
    both biases), recurrent (H, 4H) W_hhᵀ, h and c (1, H) the state (updated in place),
    out (T, H) the outputs. Each step is the decoding step's own arithmetic for one row,
    so scoring a text reads the network as generation does."""
    panels = pack_panels(recurrent)
    row = np.zeros(1, np.int64)
    gates = np.empty((1, pre.shape[1]), np.float32)
    for t in range(pre.shape[0]):
        gates[0, :] = pre[t]
        multiply_rows(h, row, panels, gates)
        cell_rows(row, gates, h, c)
        out[t, :] = h[0]
