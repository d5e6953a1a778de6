"""Pipeline stage 4, training: one optimizer step. Forward and loss in the run's precision,
backward, the gradients averaged over data-parallel ranks, clipped by their global norm, the
update, and the moving average of the weights that the run evaluates and saves; and the
process settings a fast step needs (the allocator, PyTorch's thread count).

Precision: fp32, or mixed precision on CUDA (bf16 or fp16 autocast).

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

The weight average: an exponential moving average of the weights.

At a learning rate high enough to learn fast, the weights jitter around the valley the
optimizer follows; their average over the last ~1 / (1 - decay) steps sits lower in it.
The optimizer keeps stepping the raw weights; the average only watches them. On tiny
Shakespeare, at the same 3,800 steps of the default recipe, the average at decay 0.99
scored 1.5054 nats/char where the raw weights scored 1.5097, and 1.5656 against 1.5826
halfway (benchmarks/weight_average.py, benchmarks/results/weight_average_3800steps.md).

The decay warms up as TensorFlow's ExponentialMovingAverage does, min(decay, (1 + n) /
(10 + n)) after n updates, so a short run's average is not dominated by its first,
untrained weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.network import CharRNN, Hidden, LstmImpl
from training.distributed import Distributed
from training.recipe import PRECISIONS


class TrainStep:
    def __init__(
        self,
        model: CharRNN,
        impl: LstmImpl,
        optimizer: torch.optim.Optimizer,
        precision: MixedPrecision,
        dist: Distributed,
        grad_clip: float | None,
    ):
        self.model, self.impl, self.optimizer = model, impl, optimizer
        self.precision, self.dist = precision, dist
        self.grad_clip = grad_clip

    def __call__(self, inputs: Tensor, targets: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """Train on inputs and targets (b, T), b this rank's columns, from `hidden`
        (L, b, H) each. Returns the loss, mean over all ranks' targets (0-d, on the
        device, not synchronised), and the state after the batch, detached, in float32.
        The batch may be on the host: pinned memory makes its copy asynchronous."""
        device = self.model.head.weight.device
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with self.precision.autocast():
            logits, hidden = self.model(inputs, hidden, self.impl)  # (b, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over b·T
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        # After this every rank holds the same gradients (still loss-scaled in bf16/fp16).
        mean_loss = self.dist.average_gradients(self.model.parameters(), loss)
        self.precision.unscale(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.precision.step(self.optimizer)
        # Values carry on, the graph stops here; autocast may have returned a reduced-
        # precision state, but the carried (and saved) state stays float32.
        return mean_loss, tuple(h.detach().float() for h in hidden)


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
    """The precision's autocast region and, for bf16 and fp16, its gradient scaler."""

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


class WeightAverage:
    """The running average of a model's parameters, kept in a copy of the model."""

    def __init__(self, model: CharRNN, decay: float, updates: int = 0):
        """`updates`: how many updates the average already holds (a resumed run's; the
        copy's weights must then be loaded with `load_weights`)."""
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, use_buffers=False)
        self.averaged.n_averaged.fill_(updates)
        self.model: CharRNN = self.averaged.module  # the averaged network itself

    @property
    def updates(self) -> int:
        """Updates folded in so far (AveragedModel counts them)."""
        return int(self.averaged.n_averaged)

    def update(self, model: CharRNN) -> None:
        """Fold `model`'s current parameters in (the first update copies them)."""
        # averaged ← decay·averaged + (1 - decay)·current, one foreach lerp for all tensors
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(self.current_decay())
        self.averaged.update_parameters(model)

    def current_decay(self) -> float:
        """The weight the average keeps at the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.model.load_state_dict(weights)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block, the previous count after it."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
