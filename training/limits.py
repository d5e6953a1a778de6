"""When a run stops: its limits (steps, epochs, minutes), early stopping, and a request
from outside (a signal). In a data-parallel run the ranks could disagree on the clock and
on signals, so they agree on one reason through its code (the largest code wins)."""

from __future__ import annotations

from training.config import TrainConfig
from training.state import RunCounters

# In code order: a rank out of time, or asked to stop, stops every rank at the same step.
STOP_REASONS: tuple[str, ...] = (
    "max_steps",
    "max_epochs",
    "early_stopping",
    "max_minutes",
    "interrupted",
)


def stop_reason(
    config: TrainConfig, counters: RunCounters, elapsed_seconds: float, stop_requested: bool
) -> str | None:
    """The first limit reached (steps, epochs, minutes, patience), else "interrupted" when
    a stop was requested, else None: go on."""
    if config.max_steps is not None and counters.step >= config.max_steps:
        return "max_steps"
    if config.max_epochs is not None and counters.position.epoch >= config.max_epochs:
        return "max_epochs"
    if config.max_minutes is not None and elapsed_seconds >= config.max_minutes * 60:
        return "max_minutes"
    if config.patience is not None and counters.evals_since_best >= config.patience:
        return "early_stopping"
    return "interrupted" if stop_requested else None


def reason_code(reason: str | None) -> int:
    """0 for None, else 1 + the reason's place in STOP_REASONS."""
    return 0 if reason is None else STOP_REASONS.index(reason) + 1


def reason_from_code(code: int) -> str | None:
    return None if code == 0 else STOP_REASONS[code - 1]
