"""The training LSTM kernel's gate maths for one time step, compiled (numba).

PyTorch spends ~8 dispatched element-wise ops per step forward and ~5 backward, each a
pass over memory; here each direction is one pass that keeps a step's values in
registers, which made the first layer's recurrence 1.3-1.5× faster
(benchmarks/train_speed.py). The GEMMs stay PyTorch's (MKL).

Layout (model.lstm_kernel): time, then features, then batch: gates (T, 4H, B) in PyTorch's
gate order (i, f, g, o), states (T + 1, H, B). A step's block is contiguous and the inner
loops run over the batch with the row fixed, which LLVM vectorises (8 floats per AVX2
instruction); with features or the batch outermost the same loops measured 4-5× slower.

float32 uses model.kernels' vectorisable tanh (within 3.3e-7 of the exact one); float64
uses libm's exact tanh, so torch.autograd.gradcheck checks these very loops.
"""

from __future__ import annotations

import math

from numba import njit, types
from numba.extending import overload

from model.kernels import HALF, JIT, _tanh


def gate_tanh(x: float) -> float:
    """tanh as the gate maths computes it: exact in float64, fast in float32."""
    return math.tanh(x)


@overload(gate_tanh, jit_options=JIT)
def _gate_tanh(x):
    if x == types.float64:
        return lambda x: math.tanh(x)
    return lambda x: _tanh(x)


@njit(inline="always", **JIT)
def _gate_sigmoid(x):
    return HALF + HALF * gate_tanh(HALF * x)  # σ(x) = (1 + tanh(x/2)) / 2, exactly


@njit(**JIT)
def forward_gates(gates, t, cells, hiddens, tanh_cells):
    """Step t: activate gates[t] in place (pre-activations in), then c_{t+1} = f·c_t + i·g
    into cells[t + 1], tanh(c_{t+1}) into tanh_cells[t] (kept for the backward) and
    h_{t+1} = o·tanh(c_{t+1}) into hiddens[t + 1]."""
    hidden, batch = cells.shape[1], cells.shape[2]
    for r in range(hidden):
        for b in range(batch):
            i = _gate_sigmoid(gates[t, r, b])
            f = _gate_sigmoid(gates[t, hidden + r, b])
            g = gate_tanh(gates[t, 2 * hidden + r, b])
            o = _gate_sigmoid(gates[t, 3 * hidden + r, b])
            gates[t, r, b] = i
            gates[t, hidden + r, b] = f
            gates[t, 2 * hidden + r, b] = g
            gates[t, 3 * hidden + r, b] = o
            cell = f * cells[t, r, b] + i * g
            cells[t + 1, r, b] = cell
            tanh_cell = gate_tanh(cell)
            tanh_cells[t, r, b] = tanh_cell
            hiddens[t + 1, r, b] = o * tanh_cell


@njit(**JIT)
def backward_gates(gates, t, cells, tanh_cells, grad_h, grad_c, grad_gates):
    """Step t backwards: from dL/dh_{t+1} (grad_h, (H, B), everything that reaches it) and
    dL/dc_{t+1} from later steps (grad_c, (H, B)), the pre-activation gradients into
    grad_gates[t]; grad_c becomes dL/dc_t's part through the cell (·f)."""
    hidden, batch = grad_h.shape
    for r in range(hidden):
        for b in range(batch):
            i = gates[t, r, b]
            f = gates[t, hidden + r, b]
            g = gates[t, 2 * hidden + r, b]
            o = gates[t, 3 * hidden + r, b]
            tanh_cell = tanh_cells[t, r, b]
            grad_hidden = grad_h[r, b]
            grad_cell = grad_c[r, b] + grad_hidden * o * (1 - tanh_cell * tanh_cell)
            grad_gates[t, r, b] = grad_cell * g * i * (1 - i)
            grad_gates[t, hidden + r, b] = grad_cell * cells[t, r, b] * f * (1 - f)
            grad_gates[t, 2 * hidden + r, b] = grad_cell * i * (1 - g * g)
            grad_gates[t, 3 * hidden + r, b] = grad_hidden * tanh_cell * o * (1 - o)
            grad_c[r, b] = grad_cell * f
