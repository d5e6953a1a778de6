"""The training LSTM kernel's gate maths for one time step, compiled (numba).

PyTorch spends ~8 dispatched element-wise ops per step forward and ~5 backward, each a
pass over memory; here each direction is one pass that keeps a step's values in
registers, which made the first layer's recurrence 1.3-1.5× faster
(benchmarks/train_speed.py). The GEMMs stay PyTorch's (MKL).

Layout (model.lstm_kernel): PyTorch's (time, batch, features): gates (T, B, 4H) in
PyTorch's gate order (i, f, g, o), states (T + 1, B, H). A step's block is contiguous, and
the inner loops run over one row's features through 1-D views of each gate, which LLVM
vectorises (8 floats per AVX2 instruction). Indexing the 3-D arrays directly with
`hidden + r` in the inner loop measured 4-5× slower: it did not vectorise.

The cell's maths is model.fast_math.lstm_cell, the decoding step's own: float32 uses the
vectorisable tanh (within 4e-7 of the exact one), float64 libm's exact tanh, so
torch.autograd.gradcheck checks these very loops.
"""

from __future__ import annotations

from numba import njit

from model.fast_math import JIT, lstm_cell


@njit(**JIT)
def forward_gates(gates, t, cells, hiddens, tanh_cells):
    """Step t: activate gates[t] in place (pre-activations in), then c_{t+1} = f·c_t + i·g
    into cells[t + 1], tanh(c_{t+1}) into tanh_cells[t] (kept for the backward) and
    h_{t+1} = o·tanh(c_{t+1}) into hiddens[t + 1]."""
    batch, hidden = cells.shape[1], cells.shape[2]
    for b in range(batch):
        # One 1-D view per gate: the loop below indexes them with the bare loop counter.
        i_gate, f_gate = gates[t, b, :hidden], gates[t, b, hidden : 2 * hidden]
        g_gate, o_gate = gates[t, b, 2 * hidden : 3 * hidden], gates[t, b, 3 * hidden :]
        cell_in, cell_out = cells[t, b], cells[t + 1, b]
        tanh_out, hidden_out = tanh_cells[t, b], hiddens[t + 1, b]
        for r in range(hidden):
            i, f, g, o, cell, tanh_cell = lstm_cell(
                i_gate[r], f_gate[r], g_gate[r], o_gate[r], cell_in[r]
            )
            i_gate[r], f_gate[r], g_gate[r], o_gate[r] = i, f, g, o
            cell_out[r] = cell
            tanh_out[r] = tanh_cell
            hidden_out[r] = o * tanh_cell


@njit(**JIT)
def backward_gates(gates, t, cells, tanh_cells, grad_h, grad_c, grad_gates):
    """Step t backwards: from dL/dh_{t+1} (grad_h, (B, H), everything that reaches it) and
    dL/dc_{t+1} from later steps (grad_c, (B, H)), the pre-activation gradients into
    grad_gates[t]; grad_c becomes dL/dc_t's part through the cell (·f)."""
    batch, hidden = grad_h.shape
    for b in range(batch):
        i_gate, f_gate = gates[t, b, :hidden], gates[t, b, hidden : 2 * hidden]
        g_gate, o_gate = gates[t, b, 2 * hidden : 3 * hidden], gates[t, b, 3 * hidden :]
        grad_i, grad_f = grad_gates[t, b, :hidden], grad_gates[t, b, hidden : 2 * hidden]
        grad_g, grad_o = grad_gates[t, b, 2 * hidden : 3 * hidden], grad_gates[t, b, 3 * hidden :]
        cell_in, tanh_in = cells[t, b], tanh_cells[t, b]
        grad_hidden_row, grad_cell_row = grad_h[b], grad_c[b]
        for r in range(hidden):
            i, f, g, o = i_gate[r], f_gate[r], g_gate[r], o_gate[r]
            tanh_cell = tanh_in[r]
            grad_hidden = grad_hidden_row[r]
            grad_cell = grad_cell_row[r] + grad_hidden * o * (1 - tanh_cell * tanh_cell)
            grad_i[r] = grad_cell * g * i * (1 - i)
            grad_f[r] = grad_cell * cell_in[r] * f * (1 - f)
            grad_g[r] = grad_cell * i * (1 - g * g)
            grad_o[r] = grad_hidden * tanh_cell * o * (1 - o)
            grad_cell_row[r] = grad_cell * f
