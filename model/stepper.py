"""A lean one-character step for inference: the loop that generation runs millions of times.

For the LSTM the first layer's one-hot product is a precomputed (V, 4H) table holding
W_ihᵀ + b_ih + b_hh, so a step is a row lookup plus one GEMM per layer (the upper layers'
input and recurrent products fused as [x, h]·[W_ih; W_hh]ᵀ), with gate maths in place and
buffers reused between steps. Other cells fall back to the network's forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.network import CharRNN, Hidden


class Stepper:
    """Advances B independent streams by one character: ids (B,) → logits (B, V)."""

    def __init__(self, model: CharRNN):
        self.model = model.eval()
        self.config = model.config
        self.fast = model.config.cell == "lstm"
        if not self.fast:
            return
        with torch.no_grad():
            self.input_table = model.input_table()  # (V, 4H)
            weight_hh = model.layer_weights(0)[1]
            self.recurrent = [weight_hh.t().contiguous()]  # layer 0: (H, 4H)
            self.biases: list[Tensor | None] = [None]
            for layer in range(1, self.config.num_layers):
                weight_ih, weight_hh, bias_ih, bias_hh = model.layer_weights(layer)
                stacked = torch.cat([weight_ih, weight_hh], dim=1).t().contiguous()  # (2H, 4H)
                self.recurrent.append(stacked)
                self.biases.append((bias_ih + bias_hh).contiguous())
            self.head_weight = model.head.weight.t().contiguous()  # (H, V)
            self.head_bias = model.head.bias.detach().clone()
        self._batch = -1

    @torch.no_grad()
    def prime(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Run whole primes (B, T) in one pass: → logits of the last step (B, V), state."""
        logits, hidden = self.model(ids, hidden)
        return logits[:, -1], hidden

    @torch.no_grad()
    def step(self, ids: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """ids (B,) → logits (B, V); the hidden state (h, c) is updated in place."""
        if not self.fast:
            logits, hidden = self.model(ids.unsqueeze(1), hidden)
            return logits[:, 0], hidden
        h_all, c_all = hidden  # (L, B, H) each
        batch = ids.shape[0]
        hidden_size = self.config.hidden_size
        if batch != self._batch:
            self._allocate(batch, h_all)
        for layer in range(self.config.num_layers):
            gates = self._gates  # (B, 4H)
            h, c = h_all[layer], c_all[layer]
            if layer == 0:
                torch.index_select(self.input_table, 0, ids, out=gates)
                gates.addmm_(h, self.recurrent[0])
            else:
                self._joint[:, :hidden_size] = h_all[layer - 1]
                self._joint[:, hidden_size:] = h
                torch.addmm(self.biases[layer], self._joint, self.recurrent[layer], out=gates)
            i, f, g, o = gates.split(hidden_size, dim=1)
            i.sigmoid_()
            f.sigmoid_()
            g.tanh_()
            o.sigmoid_()
            c.mul_(f).addcmul_(i, g)
            torch.tanh(c, out=h)
            h.mul_(o)
        return torch.addmm(self.head_bias, h_all[-1], self.head_weight), hidden

    def _allocate(self, batch: int, like: Tensor) -> None:
        gate_width = 4 * self.config.hidden_size
        self._gates = torch.empty(batch, gate_width, dtype=like.dtype, device=like.device)
        self._joint = torch.empty(
            batch, 2 * self.config.hidden_size, dtype=like.dtype, device=like.device
        )
        self._batch = batch
