"""One optimizer step: forward and loss in the run's precision, backward, the gradients
averaged over data-parallel ranks, clipped by their global norm, and the update."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import CharRNN, Hidden
from training.distributed import Distributed
from training.precision import MixedPrecision


class TrainStep:
    def __init__(
        self,
        model: CharRNN,
        optimizer: torch.optim.Optimizer,
        precision: MixedPrecision,
        dist: Distributed,
        grad_clip: float | None,
    ):
        self.model, self.optimizer = model, optimizer
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
            logits, hidden = self.model(inputs, hidden)  # (b, T, V)
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
