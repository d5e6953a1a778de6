"""The learning-rate schedule and its horizon: a pure function of the step, so a resumed
run needs only the step (and a measured horizon, when there is one) to continue it.

    lr ▲   warm-up    cosine decay
       │    ╱‾‾‾‾‾‾‾‾──╮__
       │   ╱              ‾‾──╮__
       │  ╱                      ‾‾──────── min_lr_ratio · lr  (held after the horizon)
       └──┴────────────────────────────┴──▶ step
          warmup_steps               horizon

The horizon is the step at which the decay ends: the smallest of max_steps and
max_epochs × batches per epoch, and, with max_minutes, an estimate of the steps that fit
in the time (see `estimate_horizon`). Until that estimate exists — the first
HORIZON_PROBE_STEPS steps, normally still inside the warm-up — a run limited by time alone
holds the peak rate.
"""

from __future__ import annotations

import math
import time

from training.config import TrainConfig

# Steps timed to estimate a time-limited run's horizon. The first step is left out of the
# timing: it pays for one-off allocations (and cuDNN's algorithm search on a GPU).
HORIZON_PROBE_STEPS = 20


def learning_rate(step: int, config: TrainConfig, horizon: int | None) -> float:
    """The rate for step `step` (0-based: the step about to run)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant" or horizon is None:
        return config.lr
    decay_steps = max(1, horizon - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def planned_horizon(
    config: TrainConfig, batches_per_epoch: int, estimate: int | None = None
) -> int | None:
    """The decay's last step from the limits known in steps, and the time estimate if
    there is one. None: time is the only limit and it has not been measured yet."""
    candidates = [estimate]
    if config.max_steps is not None:
        candidates.append(config.max_steps)
    if config.max_epochs is not None:
        candidates.append(config.max_epochs * batches_per_epoch)
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def estimate_horizon(
    step: int, elapsed_seconds: float, seconds_per_step: float, max_minutes: float
) -> int:
    """Steps that fit in `max_minutes`: those done, plus the time left over the measured
    step time. Evaluations are not in the measurement, so with frequent evaluations this
    overshoots a little and the run ends on the clock slightly before the decay does."""
    remaining = max(0.0, max_minutes * 60.0 - elapsed_seconds)
    return step + max(1, int(remaining / max(seconds_per_step, 1e-9)))


class StepTimer:
    """Times HORIZON_PROBE_STEPS steps of a session, from the end of its first step."""

    def __init__(self, step: int):
        self.start_step = step + 1
        self.started = 0.0

    def measure(self, step: int) -> float | None:
        """Call after each step: the mean seconds per step once, when the probe ends."""
        if step == self.start_step:
            self.started = time.monotonic()
        elif step == self.start_step + HORIZON_PROBE_STEPS:
            return (time.monotonic() - self.started) / HORIZON_PROBE_STEPS
        return None
