"""Training precision: fp32, or mixed precision on CUDA (bf16 or fp16 autocast).

    fp32  everything in float32; the only choice on the CPU and MPS
    bf16  CUDA: forward and loss under torch.autocast(bfloat16)
    fp16  CUDA: forward and loss under torch.autocast(float16)

Weights, gradients and optimizer state stay float32 in both mixed precisions, and both
use a GradScaler: the loss is scaled up before backward so small gradients do not flush to
zero, gradients are unscaled before clipping, and a step with inf/NaN gradients is skipped
(the scale then halves). bf16 alone would not need it, but PyTorch's autocast rule for
cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp) casts the recurrence to float16 whatever
the autocast dtype, so under "bf16" the LSTM runs in fp16 and only the matmuls around it
(the output layer) in bf16.

Mixed precision needs the "torch" recurrence (cuDNN under autocast); the hand-written
"fused" kernel writes into float32 buffers and has no autocast path. On the CPU neither
kernel has one either (PyTorch's oneDNN LSTM has no bf16 primitive), so the CPU trains
in fp32 and reduced precisions are refused with a clear message rather than run slowly
or crash deep in a kernel.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, lstm_impl: str) -> None:
    """Raise ValueError unless `precision` can train on `device` with `lstm_impl`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    if device.type != "cuda":
        raise ValueError(
            f"precision {precision} needs a CUDA GPU; on {device.type} train in fp32 (the "
            "LSTM kernels there have no reduced-precision path)"
        )
    if lstm_impl != "torch":
        raise ValueError(
            f"precision {precision} needs lstm_impl 'torch' (cuDNN); the 'fused' kernel "
            "runs in fp32 only"
        )


class MixedPrecision:
    """The precision's autocast region and, for fp16, its loss scaler."""

    def __init__(self, precision: str, device: torch.device, lstm_impl: str):
        """Raises ValueError for a precision the device or recurrence cannot train in."""
        check_precision(precision, device, lstm_impl)
        self.precision = precision
        self.device = device
        self.dtype = _DTYPES.get(precision)
        self.scaler = None if self.dtype is None else torch.amp.GradScaler(device.type)

    def autocast(self) -> AbstractContextManager:
        """Where the forward pass and the loss run: autocast for bf16/fp16, else nothing."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (before clipping reads them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), skipped by the scaler when the gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (plain numbers) for an exact resume; None in fp32."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
