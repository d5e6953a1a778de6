from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.network import CharRNN
from training.config import TrainConfig
from training.optimizer import build_optimizer


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
