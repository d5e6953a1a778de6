import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.network import CharRNN
from training.recipe import (
    HORIZON_PROBE_STEPS,
    StepTimer,
    TrainConfig,
    build_optimizer,
    estimate_horizon,
    evaluation_interval,
    learning_rate,
    planned_horizon,
    preset,
)


def _config(**changes):
    return TrainConfig(Path("data"), Path("run"), **({"max_steps": 10} | changes))


def test_defaults_and_json_round_trip():
    config = _config(betas=[0.8, 0.9])
    assert config.betas == (0.8, 0.9) and isinstance(config.data_dir, Path)
    data = json.loads(json.dumps(config.to_json()))
    assert TrainConfig.from_json(data) == config
    assert config.model_config(vocab_size=65).hidden_size == 256


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_steps": None}, "at least one of max_epochs, max_steps or max_minutes"),
        ({"batch_size": 0}, "batch_size must be an integer ≥ 1"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"optimizer": "sgd"}, "optimizer must be one of adamw, adam, nadam"),
        ({"schedule": "linear"}, "schedule must be one of cosine, constant"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0"),
        ({"max_minutes": -1.0}, "max_minutes must be > 0"),
        ({"patience": 0}, "patience must be an integer ≥ 1"),
        ({"patience": -3}, "patience must be an integer ≥ 1, got -3"),
        ({"patience": float("nan")}, "patience must be an integer ≥ 1, got nan"),
        ({"patience": 2.5}, "patience must be an integer ≥ 1"),
        ({"patience": True}, "patience must be an integer ≥ 1"),
        ({"evals_per_epoch": 0}, "evals_per_epoch must be an integer ≥ 1"),
        ({"evals_per_epoch": -1}, "evals_per_epoch must be an integer ≥ 1"),
        ({"evals_per_epoch": float("nan")}, "evals_per_epoch must be an integer ≥ 1"),
        ({"evals_per_epoch": "2"}, "evals_per_epoch must be an integer ≥ 1"),
        ({"device": "tpu"}, "device must be one of"),
        ({"lstm_impl": "cudnn"}, "lstm_impl must be one of"),
        ({"cell": "gru", "lstm_impl": "fused"}, "lstm_impl 'fused' is the LSTM kernel"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"hidden_size": 0}, "hidden_size must be at least 1"),
        ({"sample_temperature": 0.0}, "sample_temperature must be > 0"),
        ({"forget_bias": float("inf")}, "forget_bias must be a finite number"),
        ({"cell": "gru", "forget_bias": 1.0}, "forget_bias is the LSTM's forget gates"),
        ({"ema_decay": 1.0}, "ema_decay must be in [0, 1)"),
        ({"ema_decay": -0.5}, "ema_decay must be in [0, 1)"),
        ({"ema_decay": float("nan")}, "ema_decay must be in [0, 1)"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(**changes)


def test_unknown_fields_in_json_are_refused():
    data = _config().to_json() | {"learning_rate": 1.0}
    with pytest.raises(ValueError, match="unknown training config fields: learning_rate"):
        TrainConfig.from_json(data)


def test_a_saved_config_without_a_later_field_means_what_that_run_did():
    # Runs saved before weight averaging existed trained without it, and resume so.
    data = _config().to_json()
    del data["ema_decay"]
    assert TrainConfig.from_json(data).ema_decay == 0.0
    assert _config().ema_decay == 0.99


def test_presets():
    assert preset("default") == {}
    quality = preset("quality")
    assert quality["hidden_size"] > TrainConfig.hidden_size
    assert set(quality) <= {f.name for f in fields(TrainConfig)}
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_the_fine_tune_preset_stops_after_passes_without_a_better_validation_loss():
    tuned = _config(**preset("fine-tune"))
    assert (tuned.evals_per_epoch, tuned.patience) == (2, 4)  # two passes of the text
    assert (_config().evals_per_epoch, _config().patience) == (None, None)  # the default: none


@pytest.mark.parametrize(
    ("changes", "batches_per_epoch", "interval"),
    [
        ({}, 131, 500),  # eval_every alone
        ({"evals_per_epoch": 2}, 131, 66),  # twice a pass of a 300,000-character text
        ({"evals_per_epoch": 2}, 132, 66),
        ({"evals_per_epoch": 1, "eval_every": 50}, 131, 50),  # eval_every when it is sooner
        ({"evals_per_epoch": 2}, 5_000, 500),  # a large text: eval_every
        ({"evals_per_epoch": 10**9}, 131, 1),  # more than one a step: every step
    ],
)
def test_the_evaluation_interval_is_the_sooner_of_eval_every_and_a_share_of_a_pass(
    changes, batches_per_epoch, interval
):
    assert evaluation_interval(_config(**changes), batches_per_epoch) == interval


def test_weight_decay_on_matrices_only():
    model = CharRNN(ModelConfig(12, hidden_size=8, num_layers=2))
    config = TrainConfig(Path("d"), Path("r"), max_steps=1, weight_decay=0.1, betas=(0.8, 0.9))
    matrices, vectors = build_optimizer(model, config).param_groups
    assert all(p.dim() == 2 for p in matrices["params"]) and len(matrices["params"]) == 5
    assert all(p.dim() == 1 for p in vectors["params"]) and len(vectors["params"]) == 5
    assert (matrices["weight_decay"], vectors["weight_decay"]) == (0.1, 0.0)
    assert matrices["betas"] == vectors["betas"] == (0.8, 0.9)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("nadam", torch.optim.NAdam)],
)
def test_each_optimizer_choice_builds_its_kind(name, kind):
    model = CharRNN(ModelConfig(12, hidden_size=8))
    config = TrainConfig(Path("d"), Path("r"), max_steps=1, optimizer=name, weight_decay=0.1)
    optimizer = build_optimizer(model, config)
    assert type(optimizer) is kind
    if name == "nadam":  # decoupled, as AdamW's
        assert optimizer.defaults["decoupled_weight_decay"] is True


def _lr_config(**changes):
    values = {"max_steps": 1000, "lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}
    return TrainConfig(Path("d"), Path("r"), **(values | changes))


def test_warmup_then_cosine_to_the_floor():
    config = _lr_config()
    assert learning_rate(0, config, 110) == pytest.approx(0.1)
    assert learning_rate(9, config, 110) == pytest.approx(1.0)
    assert learning_rate(10, config, 110) == pytest.approx(1.0)
    assert learning_rate(60, config, 110) == pytest.approx(0.55)  # halfway: mid of 1 and 0.1
    assert learning_rate(110, config, 110) == pytest.approx(0.1)
    assert learning_rate(500, config, 110) == pytest.approx(0.1)  # held after the horizon
    assert learning_rate(60, config, None) == 1.0  # horizon not known yet: the peak


def test_constant_schedule_keeps_the_warmup():
    config = _lr_config(schedule="constant")
    assert learning_rate(4, config, 100) == pytest.approx(0.5)
    assert learning_rate(99, config, 100) == 1.0


def test_horizon_is_the_first_limit_in_steps():
    assert planned_horizon(_lr_config(max_steps=500, max_epochs=3), batches_per_epoch=100) == 300
    assert planned_horizon(_lr_config(max_steps=200, max_epochs=3), batches_per_epoch=100) == 200
    timed = _lr_config(max_steps=None, max_minutes=10.0)
    assert planned_horizon(timed, 100) is None
    assert planned_horizon(timed, 100, estimate=4321) == 4321
    assert planned_horizon(_lr_config(max_steps=50, max_minutes=10.0), 100, estimate=4321) == 50


def test_estimate_from_step_time():
    # 60 s budget, 10 s gone after 21 steps at 0.5 s a step: 100 more steps.
    assert estimate_horizon(21, 10.0, 0.5, max_minutes=1.0) == 121
    assert estimate_horizon(21, 100.0, 0.5, max_minutes=1.0) == 22  # out of time: one more


def test_step_timer_reports_once_after_the_probe(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr("training.recipe.time.monotonic", lambda: next(clock))
    timer = StepTimer(step=40)  # a resumed session: steps 41, 42, ... come next
    results = [timer.measure(step) for step in range(41, 41 + HORIZON_PROBE_STEPS + 5)]
    assert results[HORIZON_PROBE_STEPS] == pytest.approx(1 / HORIZON_PROBE_STEPS)
    assert sum(r is not None for r in results) == 1
