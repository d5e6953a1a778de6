"""An exponential moving average of the weights: the model a run evaluates, samples and saves.

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

from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.network import CharRNN


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
