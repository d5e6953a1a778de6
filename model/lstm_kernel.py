"""A hand-written LSTM layer recurrence for training on the CPU (torch-rnn's approach).

The input projections of all time steps arrive precomputed (a gather for the one-hot first
layer, one large GEMM for the others), so each step is one GEMM for the recurrence into a
preallocated buffer plus the gate maths in one compiled pass (model.lstm_gates).
Backpropagation through time is written out instead of taped op by op, and the recurrent
weight's gradient is one GEMM over all steps.

Layout: PyTorch's (time, batch, features), so a sequence is one (T·B, features) matrix:
the input projections come from one GEMM and the outputs feed the next layer's or the
output layer's in one. A step's (B, 4H) gate block is contiguous. Gate order is PyTorch's
(i, f, g, o), so the parameters are nn.LSTM's own.

The gate maths are compiled (model/lstm_gates.py), so the recurrence runs on the CPU only;
other devices run PyTorch's own kernels (cuDNN): CharRNN's impl "torch".
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.lstm_gates import backward_gates, forward_gates


class LSTMRecurrence(torch.autograd.Function):
    """(input_proj, h0, c0, weight_hh) → (outputs, h_T, c_T), CPU tensors.

    input_proj: (T, B, 4H), holding W_ih·x_t + b_ih + b_hh
    h0, c0:     (B, H)
    weight_hh:  (4H, H)
    outputs:    (T, B, H)
    """

    @staticmethod
    def forward(ctx, input_proj: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor):
        steps, batch, gate_width = input_proj.shape
        hidden = gate_width // 4
        like = {"dtype": h0.dtype, "device": h0.device}
        # Kept for backward: activated gates, cell and hidden states, tanh of the cells.
        gates = torch.empty(steps, batch, gate_width, **like)
        cells = torch.empty(steps + 1, batch, hidden, **like)
        hiddens = torch.empty(steps + 1, batch, hidden, **like)
        tanh_cells = torch.empty(steps, batch, hidden, **like)
        cells[0] = c0
        hiddens[0] = h0
        # W_hhᵀ laid out once: (B, H)·(H, 4H) from a contiguous right-hand side ran ~20 %
        # faster in MKL than from the transposed view at B = 128.
        recurrent = weight_hh.t().contiguous()  # (H, 4H)
        arrays = _numpy(gates, cells, hiddens, tanh_cells)
        for t in range(steps):
            torch.addmm(input_proj[t], hiddens[t], recurrent, out=gates[t])  # (B, 4H)
            forward_gates(arrays[0], t, *arrays[1:])
        ctx.save_for_backward(gates, cells, hiddens, tanh_cells, weight_hh)
        return hiddens[1:].clone(), hiddens[steps].clone(), cells[steps].clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h_last: Tensor, grad_c_last: Tensor):
        gates, cells, hiddens, tanh_cells, weight_hh = ctx.saved_tensors
        steps, batch, gate_width = gates.shape
        hidden = gate_width // 4
        grad_gates = torch.empty_like(gates)  # pre-activation gradients, (T, B, 4H)
        zeros = torch.zeros_like(hiddens[0])
        grad_h = zeros if grad_h_last is None else grad_h_last.contiguous()
        grad_c = (zeros if grad_c_last is None else grad_c_last).clone()  # updated in place
        if grad_outputs is not None:
            grad_h = grad_h + grad_outputs[steps - 1]
        gates_, cells_, tanh_cells_, grad_gates_, grad_c_ = _numpy(
            gates, cells, tanh_cells, grad_gates, grad_c
        )
        for t in reversed(range(steps)):
            grad_h_ = grad_h.detach().numpy()
            backward_gates(gates_, t, cells_, tanh_cells_, grad_h_, grad_c_, grad_gates_)
            # dh_{t-1} = dL/dout_{t-1} + dgates_t·W_hh: (B, 4H)·(4H, H)
            if grad_outputs is not None and t > 0:
                grad_h = torch.addmm(grad_outputs[t - 1], grad_gates[t], weight_hh)
            else:
                grad_h = grad_gates[t] @ weight_hh
        grad_weight_hh = None
        if ctx.needs_input_grad[3]:
            # Σ_t dgates_tᵀ·h_{t-1} as one GEMM: (4H, T·B)·(T·B, H)
            previous = hiddens[:-1].view(steps * batch, hidden)
            grad_weight_hh = grad_gates.view(steps * batch, gate_width).t() @ previous
        return grad_gates, grad_h, grad_c, grad_weight_hh


def lstm_recurrence(
    input_proj: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer over precomputed input projections (CPU tensors); see
    LSTMRecurrence. Raises ValueError on another device."""
    if input_proj.device.type != "cpu":
        raise ValueError("the fused LSTM kernel runs on the CPU; use impl 'torch' elsewhere")
    return LSTMRecurrence.apply(input_proj, h0, c0, weight_hh)


def _numpy(*tensors: Tensor) -> tuple:
    """NumPy views sharing the tensors' memory, made once per pass, not per step."""
    return tuple(t.detach().numpy() for t in tensors)
