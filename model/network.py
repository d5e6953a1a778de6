"""The character-level RNN: one-hot(V) → stacked LSTM/GRU/RNN → dropout → Linear(H, V).

The one-hot product of the first layer is computed as a row gather of that layer's input
weights: one_hot(x)·W_ihᵀ == W_ihᵀ[x]. Same function, same parameters, no V-wide matmul.
The parameters live in a stock nn.LSTM/GRU/RNN with input size V, so a state dict is
interchangeable with an explicit one-hot model's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig
from model.lstm_kernel import lstm_recurrence

# Hidden state: (h, c) for an LSTM, (h,) otherwise; each (num_layers, B, H).
Hidden = tuple[Tensor, ...]
LstmImpl = Literal["fused", "torch"]
LSTM_IMPLS: tuple[str, ...] = ("fused", "torch")

_RNN_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_LIBRARY_FUNCTIONS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        between_layers = config.dropout if config.num_layers > 1 else 0.0
        self.rnn = _RNN_MODULES[config.cell](
            config.vocab_size, config.hidden_size, config.num_layers, dropout=between_layers
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """A zero state for `batch_size` independent streams."""
        weight = self.head.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        count = 2 if self.config.cell == "lstm" else 1
        return tuple(
            torch.zeros(shape, dtype=weight.dtype, device=device or weight.device)
            for _ in range(count)
        )

    def forward(
        self, ids: Tensor, hidden: Hidden | None = None, impl: LstmImpl | None = None
    ) -> tuple[Tensor, Hidden]:
        """ids (B, T) int64 → logits (B, T, V) and the state after the last step.

        `impl` says how the recurrence runs, not what it computes: "fused" gathers the first
        layer's input and runs the hand-written kernel (CPU); "torch" feeds an explicit
        one-hot to PyTorch's own kernels (cuDNN on GPU). None: preferred_impl(device)."""
        if hidden is None:
            hidden = self.init_hidden(ids.shape[0], ids.device)
        impl = impl or preferred_impl(self.head.weight.device)
        ids_time_major = ids.t()  # (T, B): the recurrence walks the first axis
        if impl == "torch":
            outputs, hidden = self._library_layers(ids_time_major, hidden)
        elif impl != "fused":
            raise ValueError(f"impl must be one of {', '.join(LSTM_IMPLS)}, got {impl!r}")
        elif self.config.cell == "lstm":
            outputs, hidden = self._fused_lstm(ids_time_major, hidden)
        else:
            outputs, hidden = self._gathered_first_layer(ids_time_major, hidden)
        logits = self.head(dropout(outputs, self.config.dropout, self.training))  # (T, B, V)
        return logits.transpose(0, 1), hidden

    def set_forget_bias(self, value: float) -> None:
        """Start every LSTM layer's forget gates at bias `value` (b_ih + b_hh; b_hh's part
        zeroed), so the cell keeps its memory from the first steps (Jozefowicz et al.,
        2015, suggest 1)."""
        if self.config.cell != "lstm":
            raise ValueError(f"forget gates are the LSTM's; this network is {self.config.cell!r}")
        hidden = self.config.hidden_size
        forget = slice(hidden, 2 * hidden)  # gate order (i, f, g, o)
        with torch.no_grad():
            for layer in range(self.config.num_layers):
                _, _, bias_ih, bias_hh = self.layer_weights(layer)
                bias_ih[forget] = value
                bias_hh[forget] = 0.0

    def layer_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W_ih, W_hh, b_ih, b_hh) of one layer, in PyTorch's gate layout."""
        return tuple(
            getattr(self.rnn, f"{name}_l{layer}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def input_table(self, with_hidden_bias: bool = True) -> Tensor:
        """The first layer's one-hot product as a lookup table, (V, G·H): row x is
        one_hot(x)·W_ihᵀ + b_ih (+ b_hh). Contiguous, so a gathered row is one contiguous
        copy (gathering from W_ihᵀ as a strided view cost ~2 ms a step at 64 × 32)."""
        weight_ih, _, bias_ih, bias_hh = self.layer_weights(0)
        bias = bias_ih + bias_hh if with_hidden_bias else bias_ih
        return (weight_ih.t() + bias).contiguous()

    def first_layer_input(self, ids: Tensor, with_hidden_bias: bool) -> Tensor:
        """one_hot(ids)·W_ihᵀ + b_ih (+ b_hh) as a gather: ids (...) → (..., G·H)."""
        return F.embedding(ids, self.input_table(with_hidden_bias))

    def _fused_lstm(self, ids: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """First layer: gathered input + the hand-written kernel; the layers above it take a
        dense input, where PyTorch's own kernel (oneDNN) is the fastest we measured (our
        kernel there, its input projection one GEMM, made the step 0.95× and 0.92× as fast
        at 64 × 32 and 128 × 100)."""
        h0, c0 = hidden
        _, weight_hh, _, _ = self.layer_weights(0)
        projection = self.first_layer_input(ids, with_hidden_bias=True)  # (T, B, 4H)
        outputs, h_first, c_first = lstm_recurrence(projection, h0[0], c0[0], weight_hh)
        if self.config.num_layers == 1:
            return outputs, (h_first.unsqueeze(0), c_first.unsqueeze(0))
        params = [
            w for layer in range(1, self.config.num_layers) for w in self.layer_weights(layer)
        ]
        upper, h_rest, c_rest = torch.lstm(
            self._between_layers(outputs),
            [h0[1:].contiguous(), c0[1:].contiguous()],
            params, True, self.config.num_layers - 1, self.config.dropout, self.training,
            False, False,
        )  # fmt: skip
        h_all = torch.cat([h_first.unsqueeze(0), h_rest])
        c_all = torch.cat([c_first.unsqueeze(0), c_rest])
        return upper, (h_all, c_all)

    def _gathered_first_layer(self, ids: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """GRU/RNN: gathered first layer stepped in Python, PyTorch's kernel for the rest."""
        (h0,) = hidden
        _, weight_hh, _, bias_hh = self.layer_weights(0)
        projection = self.first_layer_input(ids, with_hidden_bias=False)  # (T, B, G·H)
        h = h0[0]
        outputs = []
        for step_input in projection:
            recurrent = torch.addmm(bias_hh, h, weight_hh.t())  # (B, G·H)
            h = (
                _gru_step(step_input, recurrent, h)
                if self.config.cell == "gru"
                else torch.tanh(step_input + recurrent)
            )
            outputs.append(h)
        first = torch.stack(outputs)  # (T, B, H)
        if self.config.num_layers == 1:
            return first, (h.unsqueeze(0),)
        params = [
            w for layer in range(1, self.config.num_layers) for w in self.layer_weights(layer)
        ]
        function = _LIBRARY_FUNCTIONS[self.config.cell]
        rest, h_rest = function(
            self._between_layers(first),
            h0[1:].contiguous(),
            params,
            True,
            self.config.num_layers - 1,
            self.config.dropout,
            self.training,
            False,
            False,
        )
        return rest, (torch.cat([h.unsqueeze(0), h_rest]),)

    def _library_layers(self, ids: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """An explicit one-hot input through PyTorch's own multi-layer kernel."""
        one_hot = F.one_hot(ids, self.config.vocab_size).to(self.head.weight.dtype)  # (T, B, V)
        params = [w for layer in range(self.config.num_layers) for w in self.layer_weights(layer)]
        function = _LIBRARY_FUNCTIONS[self.config.cell]
        state = list(hidden) if self.config.cell == "lstm" else hidden[0]
        result = function(
            one_hot,
            state,
            params,
            True,
            self.config.num_layers,
            self.rnn.dropout,
            self.training,
            False,
            False,
        )
        return result[0], tuple(result[1:])

    def _between_layers(self, outputs: Tensor) -> Tensor:
        return dropout(outputs, self.config.dropout, self.training)


def preferred_impl(device: torch.device) -> LstmImpl:
    """The recurrence to run on a device: the hand-written kernel on the CPU, cuDNN (or
    PyTorch's own kernels) elsewhere."""
    return "fused" if device.type == "cpu" else "torch"


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, as F.dropout, with a mask drawn from fewer random bits (see
    keep_mask). Uses the global generator, so it is seedable."""
    if not training or p == 0.0:
        return x
    keep = keep_mask(x.shape, p, x.device)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A bool mask, each element True with probability 1 - p, independently.

    Why not `rand(shape) >= p`: the generator then makes 32 bits per element, and on the
    CPU that was most of dropout's time (F.dropout's bernoulli_ was slower still). p = 0.5,
    the default model's, needs one random bit per element: 64 elements per 64-bit draw
    (a (32, 64, 256) mask: ~1.6 ms instead of ~3 ms). Any other p compares 16 random bits
    with p · 2^16, so the probability is p rounded to a multiple of 2^-16."""
    count = math.prod(shape)
    if p == 0.5:
        words = _random_words((count + 63) // 64, device)
        bit_values = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=device)
        bits = words.view(torch.uint8).unsqueeze(-1).bitwise_and(bit_values) != 0  # (n/8, 8)
        return bits.flatten()[:count].view(shape)
    halves = _random_words((count + 3) // 4, device).view(torch.int16)  # uniform on int16
    return halves[:count].view(shape) >= round(p * 65536) - 32768


def _random_words(count: int, device: torch.device) -> Tensor:
    """`count` int64s with (to 2^-64) uniform, independent bits, from the global generator."""
    return torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64, device=device)


def _gru_step(step_input: Tensor, recurrent: Tensor, h: Tensor) -> Tensor:
    """PyTorch's GRU cell on precomputed projections; gate order (r, z, n)."""
    in_r, in_z, in_n = step_input.chunk(3, dim=1)
    rec_r, rec_z, rec_n = recurrent.chunk(3, dim=1)
    reset = torch.sigmoid(in_r + rec_r)
    update = torch.sigmoid(in_z + rec_z)
    candidate = torch.tanh(in_n + reset * rec_n)
    return candidate + update * (h - candidate)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between truncated-BPTT chunks; the values carry on."""
    return tuple(h.detach() for h in hidden)
