"""The optimizer of a training run, built from the config (and re-tuned on resume)."""

from __future__ import annotations

from functools import partial

import torch

from model.network import CharRNN
from training.config import TrainConfig


def build_optimizer(model: CharRNN, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) or NAdam with weight decay on the matrices only: decaying biases only
    hurts. NAdam's decay is decoupled, as AdamW's."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices}, {"params": vectors}]
    kinds = {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "nadam": partial(torch.optim.NAdam, decoupled_weight_decay=True),
    }
    optimizer = kinds[config.optimizer](groups, lr=config.lr)
    set_hyperparameters(optimizer, config)
    return optimizer


def set_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    matrices, vectors = optimizer.param_groups
    for group in (matrices, vectors):
        group["betas"] = config.betas
    matrices["weight_decay"], vectors["weight_decay"] = config.weight_decay, 0.0
