"""A hand-written LSTM recurrence for the CPU (torch-rnn's approach).

The input projections of all time steps arrive precomputed (a gather for the one-hot first
layer, one large GEMM for the others), so each step is one GEMM for the recurrence into a
preallocated buffer plus in-place gate maths. Backpropagation through time is written out
instead of taped op by op: every factor that does not depend on the backward chain is
computed for all steps at once, and the recurrent weight's gradient is one GEMM.

Layout: features first, batch last, i.e. gates of one step are (4H, B). Each gate is then
a contiguous block of rows, so the element-wise maths runs on contiguous memory (with
PyTorch's usual (B, 4H) the gate slices are strided and the element-wise ops ~2× slower).
Gate order is PyTorch's (i, f, g, o), so the parameters are nn.LSTM's own.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LSTMRecurrence(torch.autograd.Function):
    """(input_proj, h0, c0, weight_hh) → (outputs, h_T, c_T).

    input_proj: (T, 4H, B), already holding W_ih·x_t + b_ih + b_hh (may be strided)
    h0, c0:     (H, B)
    weight_hh:  (4H, H)
    outputs:    (T, H, B)
    """

    @staticmethod
    def forward(ctx, input_proj: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor):
        steps, gate_width, batch = input_proj.shape
        hidden = gate_width // 4
        like = {"dtype": h0.dtype, "device": h0.device}
        # Kept for backward: activated gates, cell and hidden states of every step.
        gates = torch.empty(steps, gate_width, batch, **like)
        cells = torch.empty(steps + 1, hidden, batch, **like)
        hiddens = torch.empty(steps + 1, hidden, batch, **like)
        cells[0] = c0
        hiddens[0] = h0
        for t in range(steps):
            step = gates[t]  # (4H, B)
            torch.addmm(input_proj[t], weight_hh, hiddens[t], out=step)
            step[: 2 * hidden].sigmoid_()  # input and forget gates
            step[2 * hidden : 3 * hidden].tanh_()  # candidate
            step[3 * hidden :].sigmoid_()  # output gate
            i, f, g, o = step.split(hidden)
            cell = cells[t + 1]
            torch.mul(f, cells[t], out=cell)
            cell.addcmul_(i, g)
            torch.tanh(cell, out=hiddens[t + 1])
            hiddens[t + 1].mul_(o)
        ctx.save_for_backward(gates, cells, hiddens, weight_hh)
        return hiddens[1:].clone(), hiddens[steps].clone(), cells[steps].clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h_last: Tensor, grad_c_last: Tensor):
        gates, cells, hiddens, weight_hh = ctx.saved_tensors
        steps, gate_width, batch = gates.shape
        hidden = gate_width // 4
        i, f, g, o = gates.split(hidden, dim=1)  # each (T, H, B)
        # Factors independent of the backward chain, for all steps in a few large ops.
        tanh_c = torch.tanh(cells[1:])  # (T, H, B)
        cell_from_h = (1 - tanh_c * tanh_c).mul_(o)  # dc_t += dh_t·o(1 - tanh²c)
        # d(pre-activations of i, f, g) = dc_t · [g·i(1-i), c_{t-1}·f(1-f), i(1-g²)]
        from_cell = torch.cat([g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g)], dim=1)
        output_from_h = tanh_c.mul_(o).mul_(1 - o)  # d(pre-activation of o) = dh_t·tanh(c)·o(1-o)

        grad_gates = torch.empty_like(gates)  # pre-activation gradients, (T, 4H, B)
        grad_h = torch.zeros_like(hiddens[0]) if grad_h_last is None else grad_h_last.clone()
        grad_c = torch.zeros_like(cells[0]) if grad_c_last is None else grad_c_last.clone()
        if grad_outputs is None:
            grad_outputs = torch.zeros_like(hiddens[1:])
        grad_h += grad_outputs[steps - 1]
        zeros = torch.zeros_like(grad_h)
        for t in reversed(range(steps)):
            grad_c.addcmul_(grad_h, cell_from_h[t])
            step = grad_gates[t]  # (4H, B)
            torch.mul(
                from_cell[t].view(3, hidden, batch),
                grad_c,
                out=step[: 3 * hidden].view(3, hidden, batch),
            )
            torch.mul(grad_h, output_from_h[t], out=step[3 * hidden :])
            grad_c.mul_(f[t])
            # dh_{t-1} = dL/dout_{t-1} + W_hhᵀ·dgates_t: (H, 4H)·(4H, B)
            grad_h = torch.addmm(grad_outputs[t - 1] if t > 0 else zeros, weight_hh.t(), step)
        grad_weight_hh = None
        if ctx.needs_input_grad[3]:
            # Σ_t dgates_t·h_{t-1}ᵀ as one GEMM: (4H, T·B)·(T·B, H)
            grad_weight_hh = grad_gates.permute(1, 0, 2).reshape(gate_width, -1) @ hiddens[
                :-1
            ].permute(0, 2, 1).reshape(-1, hidden)
        return grad_gates, grad_h, grad_c, grad_weight_hh


def lstm_recurrence(
    input_proj: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer over precomputed input projections; see LSTMRecurrence."""
    return LSTMRecurrence.apply(input_proj, h0, c0, weight_hh)
