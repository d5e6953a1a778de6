from pathlib import Path

import pytest

from training.config import TrainConfig
from training.schedule import (
    HORIZON_PROBE_STEPS,
    StepTimer,
    estimate_horizon,
    learning_rate,
    planned_horizon,
)


def _config(**changes):
    values = {"max_steps": 1000, "lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}
    return TrainConfig(Path("d"), Path("r"), **(values | changes))


def test_warmup_then_cosine_to_the_floor():
    config = _config()
    assert learning_rate(0, config, 110) == pytest.approx(0.1)
    assert learning_rate(9, config, 110) == pytest.approx(1.0)
    assert learning_rate(10, config, 110) == pytest.approx(1.0)
    assert learning_rate(60, config, 110) == pytest.approx(0.55)  # halfway: mid of 1 and 0.1
    assert learning_rate(110, config, 110) == pytest.approx(0.1)
    assert learning_rate(500, config, 110) == pytest.approx(0.1)  # held after the horizon
    assert learning_rate(60, config, None) == 1.0  # horizon not known yet: the peak


def test_constant_schedule_keeps_the_warmup():
    config = _config(schedule="constant")
    assert learning_rate(4, config, 100) == pytest.approx(0.5)
    assert learning_rate(99, config, 100) == 1.0


def test_horizon_is_the_first_limit_in_steps():
    assert planned_horizon(_config(max_steps=500, max_epochs=3), batches_per_epoch=100) == 300
    assert planned_horizon(_config(max_steps=200, max_epochs=3), batches_per_epoch=100) == 200
    timed = _config(max_steps=None, max_minutes=10.0)
    assert planned_horizon(timed, 100) is None
    assert planned_horizon(timed, 100, estimate=4321) == 4321
    assert planned_horizon(_config(max_steps=50, max_minutes=10.0), 100, estimate=4321) == 50


def test_estimate_from_step_time():
    # 60 s budget, 10 s gone after 21 steps at 0.5 s a step: 100 more steps.
    assert estimate_horizon(21, 10.0, 0.5, max_minutes=1.0) == 121
    assert estimate_horizon(21, 100.0, 0.5, max_minutes=1.0) == 22  # out of time: one more


def test_step_timer_reports_once_after_the_probe(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr("training.schedule.time.monotonic", lambda: next(clock))
    timer = StepTimer(step=40)  # a resumed session: steps 41, 42, ... come next
    results = [timer.measure(step) for step in range(41, 41 + HORIZON_PROBE_STEPS + 5)]
    assert results[HORIZON_PROBE_STEPS] == pytest.approx(1 / HORIZON_PROBE_STEPS)
    assert sum(r is not None for r in results) == 1
