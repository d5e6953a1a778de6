import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from training.config import TrainConfig, preset


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
